"""Hostile recipes and overrides: each exits with code 2 before any actor starts, naming the key at fault,
within 10 s, and leaves nothing behind.

Most run ``rlstack.train.main`` in this process (the imports are paid once); a few run the real command
line in a subprocess, one of them against a local Ray whose CPUs the placement exceeds.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlstack.preflight import check_cluster
from rlstack.train import main

ROOT = Path(__file__).parents[2]
TINY = str(ROOT / "recipes/grpo_tiny_random.yaml")
LIMIT_S = 10.0

LAUGHS = "[" + ",".join(["1"] * 9) + "]"
BOMB = "{" + ", ".join(
    [f"a0: &a0 {LAUGHS}"] + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
) + "}"  # fmt: skip
"""Under 300 bytes of flow YAML whose aliases expand to 9**9 (387 million) numbers."""
SLEEPS = "import time\ntime.sleep(60)\n\n\ndef score(**kwargs):\n    return 0.0\n"
QUITS = "raise SystemExit(0)\n"

CASES = [
    # counts below 1
    ("num-prompts-0", ["rollout.num_prompts=0"], "rollout.num_prompts"),
    ("eval-samples-0", ["eval.num_samples=0"], "eval.num_samples"),
    ("trainer-ranks-0", ["placement.num_trainer_ranks=0"], "placement.num_trainer_ranks"),
    ("rollout-workers-0", ["placement.num_rollout_workers=0"], "placement.num_rollout_workers"),
    ("reward-workers-0", ["placement.num_reward_workers=0"], "placement.num_reward_workers"),
    ("max-new-tokens-0", ["rollout.max_new_tokens=0"], "rollout.max_new_tokens"),
    ("num-steps-negative", ["trainer.num_steps=-5"], "trainer.num_steps"),
    ("minibatches-0", ["algorithm.num_minibatches=0"], "algorithm.num_minibatches"),
    ("micro-batch-tokens-0", ["trainer.micro_batch_tokens=0"], "trainer.micro_batch_tokens"),
    ("num-eval-0", ["data.num_eval=0"], "data.num_eval"),
    ("samples-1", ["rollout.num_samples=1"], "rollout.num_samples=1"),
    ("every-steps-negative", ["checkpoint.every_steps=-1"], "checkpoint.every_steps"),
    # numbers that are not finite or out of range
    ("lr-nan", ["trainer.lr=.nan"], "trainer.lr"),
    ("lr-inf", ["trainer.lr=.inf"], "trainer.lr"),
    ("lr-negative", ["trainer.lr=-1e-3"], "trainer.lr"),
    ("temperature-nan", ["rollout.temperature=.nan"], "rollout.temperature"),
    ("top-p-0", ["rollout.top_p=0"], "rollout.top_p"),
    ("top-p-above-1", ["rollout.top_p=1.5"], "rollout.top_p"),
    ("gpu-share-above-1", ["rollout.gpu_memory_utilization=2"], "rollout.gpu_memory_utilization"),
    ("clip-low-1", ["algorithm.clip_low=1"], "algorithm.clip_low"),
    ("kl-negative", ["algorithm.kl_coef=-0.1"], "algorithm.kl_coef"),
    ("beta-above-1", ["trainer.betas=[0.9, 1.5]"], "trainer.betas.1"),
    ("grad-norm-0", ["trainer.max_grad_norm=0"], "trainer.max_grad_norm"),
    ("reward-timeout-0", ["reward.timeout_s=0"], "reward.timeout_s"),
    ("reward-weight-nan", ["reward.functions=[{fn: exact_match, weight: .nan}]"], "reward.functions.0.weight"),
    ("rollout-cpus-negative", ["placement.rollout_cpus=-1"], "placement.rollout_cpus"),
    ("engine-timeout-negative", ["rollout.timeout_s=-1"], "rollout.timeout_s"),
    # budgets past the model's context
    ("max-new-tokens-huge", ["rollout.max_new_tokens=1000000000"], "rollout.max_new_tokens=1000000000"),
    ("prompt-tokens-huge", ["data.max_prompt_tokens=4000"], "data.max_prompt_tokens=4000"),
    # checkpoint URIs fsspec cannot open
    ("uri-unknown-protocol", ["checkpoint.uri=nosuchproto://x"], "checkpoint.uri"),
    ("resume-unknown-protocol", ["checkpoint.resume_from=nosuchproto://x/step_1"], "checkpoint.resume_from"),
    # run directories outside tracking.run_root
    ("name-traversal", ["tracking.name=../../../tmp/x"], "tracking.name"),
    ("name-parent", ["tracking.name=.."], "tracking.name"),
    ("name-absolute", ["tracking.name=/tmp/x"], "tracking.name"),
    # sections and YAML that are not what they claim
    ("section-is-a-number", ["tracking=5"], "tracking"),
    ("override-yaml-unclosed", ["trainer.lr=[1e-3"], "override 'trainer.lr=[1e-3': invalid YAML"),
    ("override-alias-bomb", [f"trainer.deepspeed.config={BOMB}"], "override 'trainer.deepspeed.config="),
    ("override-alias-loop", ["trainer.deepspeed.config=&a [*a]"], "override 'trainer.deepspeed.config="),
    ("override-not-key-value", ["trainer.lr"], "override 'trainer.lr' is not of the form key.path=value"),
    # user reward modules
    ("reward-sleeps-at-import", ["reward.functions=[{tmp}/sleeps.py:score]", "reward.import_timeout_s=1"],
     "reward.functions.0.fn="),
    ("reward-exits-at-import", ["reward.functions=[{tmp}/quits.py:score]"], "SystemExit"),
]  # fmt: skip

RECIPE_FILES = [
    ("yaml-unclosed", "name: x\ntrainer:\n  lr: [1e-3\n", "recipe.yaml': invalid YAML at line 4"),
    ("yaml-tab-indent", "trainer:\n\tlr: 1\n", "recipe.yaml': invalid YAML at line 2"),
    ("alias-bomb-deepspeed", f"trainer:\n  deepspeed:\n    config: {BOMB}\n", "aliases expand to"),
    ("not-a-mapping", "- trainer\n- rollout\n", "must hold a mapping"),
]


def refuse(args: list[str], tmp_path: Path, capsys) -> str:
    """``rlstack train ARGS`` in this process: asserts exit 2 within ``LIMIT_S`` and an empty ``tmp_path/runs``;
    returns stderr."""
    (tmp_path / "sleeps.py").write_text(SLEEPS)
    (tmp_path / "quits.py").write_text(QUITS)
    before = sorted(tmp_path.rglob("*"))
    begin = time.perf_counter()
    code = main([*[a.replace("{tmp}", str(tmp_path)) for a in args], f"tracking.run_root={tmp_path}/runs"])
    elapsed = time.perf_counter() - begin
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, inside run_root or out of it
    assert len(err) < 2000, f"{len(err)} characters of error"
    return err


@pytest.mark.parametrize(("overrides", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_override_exits_2_naming_the_key(overrides, named, tmp_path, capsys):
    err = refuse([TINY, *overrides], tmp_path, capsys)
    assert named in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "named"), [c[1:] for c in RECIPE_FILES], ids=[c[0] for c in RECIPE_FILES])
def test_a_hostile_recipe_file_exits_2_naming_the_file_and_line(text, named, tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text(text)
    err = refuse([str(tmp_path / "recipe.yaml")], tmp_path, capsys)
    assert named in err, err


def node(cpus: float, gpus: float = 0.0, alive: bool = True, **custom: float) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **custom}}


@pytest.mark.parametrize(
    ("overrides", "nodes", "named"),
    [
        (["placement.trainer_cpus=64"], [node(2)], "placement.trainer_cpus: one actor asks for {'CPU': 64.0}"),
        (["placement.trainer_cpus=1.5"], [node(2), node(1)],  # each rank fits a node, not the sum of everything
         "the placement asks for 3.7 CPU in all (placement.num_trainer_ranks=2 x placement.trainer_cpus=1.5"),
        (["placement.trainer_gpus=1"], [node(8), node(8, alive=False, GPU=8)], "placement.trainer_gpus"),
        (["placement.rollout_resources={big: 1}"], [node(8, big=0.5)], "placement.rollout_resources.big"),
        (["reward.functions=[{fn: exact_match, dedicated: true, num_gpus: 1}]"], [node(8)],
         "reward.functions.0.num_gpus"),
    ],
)  # fmt: skip
def test_a_placement_the_cluster_cannot_hold_is_refused_naming_the_setting(overrides, nodes, named):
    from rlstack.config import RecipeError, load_recipe

    with pytest.raises(RecipeError) as refused:
        check_cluster(load_recipe(TINY, overrides), nodes)
    assert named in str(refused.value)


def test_a_placement_that_fits_is_taken():
    from rlstack.config import load_recipe

    check_cluster(load_recipe(TINY), [node(2)])  # 2 x 0.5 trainer + 0.5 rollout + 2 x 0.1 reward = 1.7 CPUs


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    begin = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "rlstack.cli", "train", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=180, env=env,
    )  # fmt: skip
    return result, time.perf_counter() - begin


def test_the_command_line_refuses_a_malformed_recipe_and_a_quitting_reward_module(tmp_path):
    (tmp_path / "recipe.yaml").write_text("trainer:\n  lr: [1e-3\n")
    (tmp_path / "quits.py").write_text(QUITS)
    result, _ = cli(str(tmp_path / "recipe.yaml"), f"tracking.run_root={tmp_path}/runs")
    assert result.returncode == 2 and "invalid YAML at line 3" in result.stderr, result.stderr
    result, _ = cli(TINY, f"reward.functions=[{tmp_path}/quits.py:score]", f"tracking.run_root={tmp_path}/runs")
    assert result.returncode == 2 and "SystemExit" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_more_cpus_than_a_local_ray_has_exits_2_after_ray_starts_and_leaves_no_run_directory(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own, with this machine's CPUs
    result, elapsed = cli(
        TINY, "placement.trainer_cpus=64", f"tracking.run_root={tmp_path}", "tracking.name=r", env=env
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "placement.trainer_cpus: one actor asks for {'CPU': 64.0}" in result.stderr
    assert not (tmp_path / "r").exists()
    assert elapsed < 120  # not the 300 s placement-group wait it was
