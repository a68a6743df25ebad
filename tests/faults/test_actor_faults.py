"""Injected faults on a real local Ray with the tiny recipe: trainer ranks and engines SIGKILLed and SIGSTOPped
mid-run, a reward actor SIGSTOPped, the driver killed mid-checkpoint, a torn checkpoint.

Each run either recovers (``checkpoint.auto_resume``) and ends with weights bit-identical to a run without the
fault, so no completed step is lost; or fails within its deadline with an error that names the group, the
actor and the call.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from rlstack.checkpoint import MANIFEST, check_resumable, continued
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.train import main as train_main

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
TINY = ROOT / "recipes/grpo_tiny_random.yaml"
NUM_STEPS = 4
TIMEOUT_S = 8
"""``trainer.timeout_s`` and ``rollout.timeout_s`` in these runs: a stopped actor costs this long."""
DEADLINE_SLACK_S = 12
"""What a failure may take past ``TIMEOUT_S``: the health check (5 s) and tearing the group down."""
COMMON = [
    f"reward.functions=[{ROOT}/tests/assets/rewards.py:distinct_characters]",
    "tracking.wandb=disabled",
    "tracking.console=off",
    "rollout.dtype=float32",
    f"trainer.num_steps={NUM_STEPS}",
    "checkpoint.every_steps=2",
    "eval.every_steps=0",
    f"trainer.timeout_s={TIMEOUT_S}",
    f"rollout.timeout_s={TIMEOUT_S}",
]


@pytest.fixture(scope="module")
def cluster():
    """A fresh local Ray (never one another process started), shared by this module's runs."""
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=2**30,
        runtime_env={"working_dir": str(ROOT), "excludes": [".venv", "runs", ".git", ".device"]},
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


def recipe(tmp_path: Path, *overrides: str):
    return load_recipe(TINY, [*COMMON, f"tracking.run_root={tmp_path}", "tracking.name=run", *overrides])


def pid_of(worker: Any) -> int:
    return ray.get(worker.__ray_call__.remote(lambda _: os.getpid()), timeout=60)


class Faulty(GRPOController):
    """Sends ``signal`` to one actor of ``group`` once, ``delay_s`` into step ``at_step`` (or into its update)."""

    def __init__(self, recipe: Any, run_dir: Path, fault: tuple[str, int, int, signal.Signals, float] | None):
        """``fault``: ``(group, index, at_step, signal, delay_s)``."""
        self.fault, self.victims, self.step_now = fault, [], 0
        super().__init__(recipe, run_dir)

    def step(self, step: int) -> dict[str, Any]:
        self.step_now = step
        if self.fault and self.fault[0] == "rollout" and self.fault[2] == step:
            self.fire(self.rollout.workers)
        if self.fault and self.fault[0] == "reward" and self.fault[2] == step:
            self.fire(self.rewards.groups[0][1])
        return super().step(step)

    def train(self, samples: list[Any]) -> dict[str, float]:
        if self.fault and self.fault[0] == "trainer" and self.fault[2] == self.step_now:
            self.fire(self.trainer.workers)
        return super().train(samples)

    def fire(self, workers: list[Any]) -> None:
        assert self.fault is not None
        _, index, _, sig, delay_s = self.fault
        pid = pid_of(workers[index])
        self.victims.append(pid)
        threading.Timer(delay_s, os.kill, (pid, sig)).start()
        self.fault = None


def run(tmp_path: Path, fault: tuple[str, int, int, signal.Signals, float] | None, *overrides: str):
    """The run's trainer fingerprint, metrics records and wall time; the fault is fired once."""
    controller = Faulty(recipe(tmp_path, *overrides), tmp_path / "run", fault)
    start = time.monotonic()
    with controller:
        try:
            controller.run()
            weights = controller.trainer.fingerprint()
        finally:
            wall_s = time.monotonic() - start
            records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    return weights, records, wall_s, controller


@pytest.fixture(scope="module")
def straight(cluster, tmp_path_factory):
    """The weights after the same run without a fault, and its final checkpoint's manifest."""
    tmp_path = tmp_path_factory.mktemp("straight")
    weights, _, _, _ = run(tmp_path, None)
    manifest = json.loads((tmp_path / f"run/checkpoints/step_{NUM_STEPS}/{MANIFEST}").read_text())["files"]
    return weights, manifest


def restarts(records: list[dict[str, Any]]) -> list[str]:
    return [r["note"] for r in records if "restarts" in r]


def trained_steps(records: list[dict[str, Any]]) -> list[int]:
    return [r["step"] for r in records if "reward/mean" in r]


@pytest.mark.parametrize(
    ("group", "index", "sig", "cause"),
    [
        ("trainer", 1, signal.SIGKILL, "trainer rank 1 died during"),
        ("trainer", 0, signal.SIGSTOP, f"trainer rank 0 did not answer .* within trainer.timeout_s={TIMEOUT_S} "),
        ("rollout", 0, signal.SIGKILL, "rollout worker 0 died during generate"),
        (
            "rollout",
            0,
            signal.SIGSTOP,
            f"rollout worker 0 did not finish generate within rollout.timeout_s={TIMEOUT_S}",
        ),
    ],
    ids=["trainer-sigkill", "trainer-sigstop", "rollout-sigkill", "rollout-sigstop"],
)
def test_a_killed_or_stopped_actor_is_rebuilt_and_the_run_ends_as_without_the_fault(
    straight, tmp_path, group, index, sig, cause
):
    delay_s = 0.05 if group == "trainer" else 0.0  # into the update; before the engines generate
    weights, records, _, controller = run(tmp_path, (group, index, 3, sig, delay_s), "checkpoint.auto_resume=true")
    [note] = restarts(records)
    assert re.search(cause, note), note
    assert f"{group} group rebuilt" in note
    assert weights == straight[0]  # bit-identical: nothing done before the fault was lost or done twice over
    assert trained_steps(records)[-1] == NUM_STEPS and set(trained_steps(records)) == set(range(1, NUM_STEPS + 1))
    assert controller.num_restarts == 1


class KilledAtTheEnd(Faulty):
    """SIGKILLs the engine during the run's final evaluation, then its replacement during the rebuild's sync."""

    def __init__(self, recipe: Any, run_dir: Path):
        super().__init__(recipe, run_dir, None)
        self.kills = 0

    def timed_evaluation(self) -> Any:
        if self.step_now == NUM_STEPS and self.kills == 0:
            self.kill_engine()
        return super().timed_evaluation()

    def sync_weights(self) -> None:
        if self.num_restarts == 1 and self.kills == 1:
            self.kill_engine()
        super().sync_weights()

    def kill_engine(self) -> None:
        self.kills += 1
        os.kill(pid_of(self.rollout.workers[0]), signal.SIGKILL)


def test_an_engine_lost_in_the_final_evaluation_and_again_while_rebuilt_costs_two_restarts_and_nothing_else(
    straight, tmp_path
):
    controller = KilledAtTheEnd(recipe(tmp_path, "checkpoint.auto_resume=true"), tmp_path / "run")
    with controller:
        summary = controller.run()
        weights = controller.trainer.fingerprint()
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    notes = restarts(records)
    assert len(notes) == 2 and controller.num_restarts == 2 and controller.kills == 2  # one rebuild took two tries
    assert re.search("restart 1 failed: .*rebuilding after: rollout worker 0 died during generate", notes[0]), notes
    assert notes[1].startswith("restart 2: ") and "rollout group rebuilt" in notes[1], notes
    assert {r["step"] for r in records if "restarts" in r} == {NUM_STEPS}  # logged at the run's last step
    assert weights == straight[0] and summary["steps"] == NUM_STEPS and "greedy_accuracy_after" in summary
    assert trained_steps(records) == list(range(1, NUM_STEPS + 1))  # no step trained twice


def test_a_dead_trainer_rank_without_auto_resume_fails_at_once_naming_it_and_keeps_the_last_checkpoint(
    cluster, tmp_path
):
    with pytest.raises(Exception, match="trainer rank 1 died during") as failure:
        run(tmp_path, ("trainer", 1, 3, signal.SIGKILL, 0.05))
    assert type(failure.value).__name__ == "ActorFailure"
    check_resumable(str(tmp_path / "run/checkpoints/step_2"))  # the steps completed before it survive


def test_a_stopped_trainer_rank_without_auto_resume_fails_within_its_deadline_and_is_torn_down(cluster, tmp_path):
    controller = Faulty(recipe(tmp_path), tmp_path / "run", ("trainer", 1, 1, signal.SIGSTOP, 0.0))
    start = time.monotonic()
    with controller, pytest.raises(Exception, match="trainer rank 1 did not answer step within") as failure:
        controller.run()
    assert time.monotonic() - start < TIMEOUT_S + DEADLINE_SLACK_S + 10  # the step itself, the health check
    assert "nor a health check: its process is stopped or hung" in str(failure.value)
    assert controller.trainer.workers == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # Ray kills the stopped process, which ends even while stopped
        try:
            os.kill(controller.victims[0], 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the stopped rank (pid {controller.victims[0]}) is still there")


def test_a_stopped_reward_actor_costs_one_step_its_deadline_and_the_run_goes_on(cluster, tmp_path):
    """The pool waits ``reward.actor_timeout_s`` for the stopped actor, kills it (Ray starts it again) and scores
    its requests ``reward.error_score``, counted; the next steps score normally."""
    _, records, _, _ = run(tmp_path, ("reward", 0, 2, signal.SIGSTOP, 0.0), "reward.actor_timeout_s=4")
    steps = {r["step"]: r for r in records if "reward/mean" in r}
    assert sorted(steps) == list(range(1, NUM_STEPS + 1))
    errors = [steps[s]["reward/distinct_characters/errors"] for s in sorted(steps)]
    assert errors[1] > 0 and errors[0] == errors[2] == errors[3] == 0, errors
    assert 4 <= steps[2]["time/reward"] < 4 + DEADLINE_SLACK_S


def test_restarts_past_max_restarts_end_the_run_naming_the_limit(cluster, tmp_path):
    overrides = ("checkpoint.auto_resume=true", "checkpoint.max_restarts=0")
    controller = Faulty(recipe(tmp_path, *overrides), tmp_path / "run", ("rollout", 0, 2, signal.SIGKILL, 0.0))
    with controller, pytest.raises(RuntimeError, match=r"rollout worker 0 died .*max_restarts=0 restarts were spent"):
        controller.run()


def test_a_driver_killed_mid_checkpoint_is_continued_by_resubmitting_the_same_name(cluster, straight, tmp_path):
    """The killed run's staged checkpoint is never taken for a complete one; the job run again with the same
    ``tracking.name`` and ``auto_resume`` continues from its last complete checkpoint, to the same weights."""
    args = [sys.executable, "-m", "rlstack.train", str(TINY), *COMMON]
    args += [f"tracking.run_root={tmp_path}", "tracking.name=run", "checkpoint.auto_resume=true"]
    env = {**os.environ, "RAY_ADDRESS": cluster}
    checkpoints = tmp_path / "run/checkpoints"
    driver = subprocess.Popen([*args, "checkpoint.every_steps=1"], env=env, cwd=ROOT)
    try:
        seen: list[str] = []
        while driver.poll() is None and not seen:
            names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
            seen = [n for n in names if n.startswith(".step_2.partial-")]
            time.sleep(0.001)
        driver.kill()
        assert seen, "the run ended before its second checkpoint was staged"
    finally:
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    assert not (checkpoints / "step_3").exists()
    resubmitted = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resubmitted.returncode == 0, resubmitted.stderr[-3000:]
    summary = json.loads(resubmitted.stdout.strip().splitlines()[-1])["summary"]
    assert summary["steps"] == NUM_STEPS
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    resumed_at = [r["step"] for r in records if "reward/mean" not in r and r["step"] < NUM_STEPS][-1]
    assert resumed_at in (1, 2)  # the killed run's step 2 checkpoint counts only if its commit completed
    manifest = json.loads((checkpoints / f"step_{NUM_STEPS}/{MANIFEST}").read_text())["files"]
    assert manifest["model.safetensors"] == straight[1]["model.safetensors"]  # bit-identical weights
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_torn_checkpoint_is_refused_before_any_actor_starts_and_skipped_when_continuing(cluster, tmp_path):
    run(tmp_path, None, f"trainer.num_steps={NUM_STEPS // 2}", "checkpoint.every_steps=1")
    torn = tmp_path / f"run/checkpoints/step_{NUM_STEPS // 2}"
    weights = torn / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short
    start = time.monotonic()
    code = train_main([str(TINY), *COMMON, f"tracking.run_root={tmp_path}", "tracking.name=other",
                       f"checkpoint.resume_from={torn}"])  # fmt: skip
    assert code == 2 and time.monotonic() - start < 10
    with pytest.raises(ValueError, match="is torn: model.safetensors holds 100 bytes"):
        check_resumable(str(torn))
    resumed = continued(recipe(tmp_path, "checkpoint.auto_resume=true"), tmp_path / "run")
    assert resumed.checkpoint.resume_from == str(tmp_path / "run/checkpoints/step_1")
