"""What a user sees: a quiet ``rlstack train`` prints rlstack's own lines and leaves the libraries' output in
``<run_dir>/logs/``; ``--verbose`` shows it on the console as well."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

MAX_QUIET_LINES = 12
"""The opening lines (recipe, run directory, logs), a line per step and evaluation, and the summary."""
NOISY_REWARD = """
import ctypes
import sys


def noisy(completion, **row):
    print("noisy reward: called", file=sys.stderr)
    libc = ctypes.CDLL(None)
    libc.puts(b"noisy reward: called from C")  # what a C library prints, past Python's sys.stdout
    libc.fflush(None)
    return 0.0
"""
"""A reward (run in the reward actors only) that writes to stderr from Python and to stdout from C."""


def train(tmp_path, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own
    command = [
        sys.executable, "-m", "rlstack.train", "recipes/grpo_tiny_random.yaml", f"tracking.run_root={tmp_path}",
        f"tracking.name={name}", "trainer.num_steps=1", "checkpoint.at_end=false",
        f"reward.functions=[exact_match, {tmp_path / 'noisy.py'}:noisy]", *args,
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_quiet_run_prints_only_its_own_lines_and_verbose_shows_the_libraries_logs(tmp_path):
    (tmp_path / "noisy.py").write_text(NOISY_REWARD)
    quiet, verbose = train(tmp_path, "quiet"), train(tmp_path, "verbose", "--verbose")  # side by side: Ray's start
    quiet_out, _ = quiet.communicate(timeout=600)  # dominates both
    verbose_out, _ = verbose.communicate(timeout=600)
    assert quiet.returncode == 0, quiet_out[-3000:]
    assert verbose.returncode == 0, verbose_out[-3000:]

    lines = quiet_out.splitlines()
    assert len(lines) <= MAX_QUIET_LINES, quiet_out
    assert lines[0].startswith("grpo-tiny: grpo on random:tiny, 1 step on cpu")
    assert lines[1] == f"run directory: {tmp_path / 'quiet'}"
    assert any(line.startswith("step 1  reward/mean=") for line in lines)
    assert lines[-1].startswith('{"summary": ')
    assert "noisy reward" not in quiet_out and "INFO" not in quiet_out and "WARNING" not in quiet_out

    logs = tmp_path / "quiet" / "logs"
    assert {"driver.log", "rollout-0.log", "trainer-0.log", "trainer-1.log"} <= {p.name for p in logs.iterdir()}
    reward_logs = "".join(p.read_text() for p in logs.glob("reward-*.log"))
    assert "noisy reward: called\n" in reward_logs and "noisy reward: called from C" in reward_logs

    assert "noisy reward: called\n" in verbose_out and "noisy reward: called from C" in verbose_out
    assert "INFO" in verbose_out  # Ray's own lines, as before
    assert not (tmp_path / "verbose" / "logs").exists()
