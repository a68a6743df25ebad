"""The service's side of Ray's job system: submit a recipe, read a job's status and logs, stop it."""

import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

ROOT = Path(__file__).resolve().parents[2]
"""The project directory, shipped to the cluster as the job's working directory."""
EXCLUDES = [".venv", "runs", ".git", ".device", "wandb", "*.db"]
STATUS = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "stopped",
}


class Jobs:
    """A ``JobSubmissionClient`` on the cluster's dashboard address, e.g. ``http://127.0.0.1:8265``."""

    def __init__(self, address: str):
        self.address = address
        self.client = JobSubmissionClient(address)

    def submit(self, run_id: str, recipe: dict[str, Any], env: dict[str, str]) -> str:
        """Start ``python -m rlstack.train <recipe as JSON>`` as the job ``run_id``; returns the job id."""
        entrypoint = f"python -m rlstack.train {shlex.quote(json.dumps(recipe))}"
        return self.client.submit_job(
            entrypoint=entrypoint,
            submission_id=run_id,
            runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env},
        )

    def status(self, job_id: str) -> tuple[str, str | None]:
        """``(status, message)``; an unknown job counts as failed."""
        try:
            info = self.client.get_job_info(job_id)
        except RuntimeError as exc:
            return "failed", f"Ray has no job {job_id!r}: {exc}"
        return STATUS[info.status], info.message

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def follow(self, job_id: str) -> AsyncIterator[str]:
        return self.client.tail_job_logs(job_id)

    def stop(self, job_id: str) -> None:
        self.client.stop_job(job_id)
