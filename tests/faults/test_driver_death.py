"""A driver killed outright mid-run (SIGKILL, as the OOM killer does): it takes the local Ray it started with it,
and the job run again under the same name continues from its last complete checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]
NUM_STEPS = 5


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_driver_leaves_no_ray_behind_and_its_run_continues_when_run_again(tmp_path):
    args = [sys.executable, "-m", "rlstack.train", str(ROOT / "recipes/grpo_tiny_random.yaml"),
            f"reward.functions=[{ROOT}/tests/assets/rewards.py:distinct_characters]", "tracking.wandb=disabled",
            "tracking.console=off", f"trainer.num_steps={NUM_STEPS}", "checkpoint.every_steps=1",
            "eval.every_steps=0", "data.num_eval=4", "checkpoint.auto_resume=true",
            f"tracking.run_root={tmp_path}", "tracking.name=run"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # a Ray of its own
    driver = subprocess.Popen(args, env=env, cwd=ROOT)
    metrics = tmp_path / "run/metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run/checkpoints/step_1").is_dir():  # renamed into place once complete
            assert driver.poll() is None and time.monotonic() < deadline, "the run did not save its first step"
            time.sleep(0.05)
        descendants = psutil.Process(driver.pid).children(recursive=True)
        head = [p for p in descendants if "rlstack.watchdog" not in " ".join(p.cmdline())]  # the head and workers
        names = {p.name() for p in head}
        assert {"gcs_server", "raylet"} <= names, names
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30
    while [p for p in head if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.name() for p in head if alive(p)]
    saved = max(int(p.name.removeprefix("step_")) for p in (tmp_path / "run/checkpoints").glob("step_*"))
    assert saved < NUM_STEPS, "the run ended before it was killed"
    records_before = len(metrics.read_text().splitlines())

    again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["summary"]["steps"] == NUM_STEPS
    records = [json.loads(line) for line in metrics.read_text().splitlines()[records_before:]]
    assert [r["step"] for r in records if "reward/mean" in r] == list(range(saved + 1, NUM_STEPS + 1))
