"""``ray job submit`` of a recipe against a ``ray start --head`` cluster, as a user runs it."""

import json
import subprocess
import sys

import pytest

from rlstack.ray_head import cluster_env, start_head

pytestmark = pytest.mark.e2e

DASHBOARD_PORT = "8299"


def ray(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=env, **kwargs)


@pytest.mark.slow
def test_ray_job_submit_runs_grpo_sft_and_dpo_recipes_to_completion(tmp_path, request):
    env = cluster_env()
    start_head(env, "--num-cpus=2", "--port=6399", f"--dashboard-port={DASHBOARD_PORT}",
               "--include-dashboard=true", f"--object-store-memory={2**30}")  # fmt: skip

    def submit(name: str, *overrides: str) -> subprocess.CompletedProcess:
        return ray(
            "job", "submit", f"--address=http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir", ".",
            "--", "python", "-m", "rlstack.train", "recipes/grpo_tiny_random.yaml",
            f"tracking.run_root={tmp_path}", f"tracking.name={name}", *overrides,
            env=env, cwd=request.config.rootpath, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    try:
        job = submit("job", "tracking.wandb=offline", "reward.functions=[recipes/rewards/concise.py:concise_answer]")
        supervised = [
            submit(m, f"algorithm.name={m}", "tracking.wandb=disabled", "eval.num_samples=1") for m in ("sft", "dpo")
        ]
    finally:
        ray("stop", "--force", env=env, check=False, capture_output=True)
    for mode, result in zip(("sft", "dpo"), supervised, strict=True):
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary = json.loads((tmp_path / mode / "summary.json").read_text())
        assert summary["steps"] == 2 and "loss_after" in summary and "greedy_accuracy_after" in summary
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    summary = json.loads((tmp_path / "job/summary.json").read_text())
    assert summary["steps"] == 2 and summary["policy_version"] == 2
    assert '{"summary": ' in job.stdout
    assert (tmp_path / "job/wandb").is_dir()
    steps = [json.loads(line) for line in (tmp_path / "job/metrics.jsonl").read_text().splitlines()]
    assert all("reward/concise_answer/words" in s for s in steps if "reward/mean" in s)
