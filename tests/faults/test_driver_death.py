"""A driver killed outright (SIGKILL, as the OOM killer does) takes the local Ray it started with it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_driver_leaves_no_ray_head_behind(tmp_path):
    args = [sys.executable, "-m", "rlstack.train", str(ROOT / "recipes/grpo_tiny_random.yaml"),
            f"reward.functions=[{ROOT}/tests/assets/rewards.py:distinct_characters]", "tracking.wandb=disabled",
            "tracking.console=off", "trainer.num_steps=50", "eval.every_steps=0", "data.num_eval=4",
            f"tracking.run_root={tmp_path}", "tracking.name=run"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # a Ray of its own
    driver = subprocess.Popen(args, env=env, cwd=ROOT)
    metrics = tmp_path / "run/metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.exists() and any("reward/mean" in json.loads(line) for line in metrics.open())):
            assert driver.poll() is None and time.monotonic() < deadline, "the run did not reach its first step"
            time.sleep(0.2)
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
