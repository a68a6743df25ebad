"""The service's side of Ray's job system: submit a recipe, read a job's status and logs, stop it.

Ray refuses some requests only for now: on a head that has just started, its dashboard may not
answer yet, and its job agent may not have registered (the dashboard then answers a submission
with ``No available agent to submit job`` after waiting 10 s itself). ``wait_for_job_agent``
waits that out at start-up, and ``with_backoff`` retries such a refusal within a deadline. A dashboard
that does not answer at all makes every call here raise ``RayUnavailable``, which the service answers
with 503.

A job gets its recipe as a file in its working directory, not on its command line, where one
argument may hold at most 128 KiB.
"""

import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml
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
JOB_RECIPES = ".rlstack-jobs"
"""Directory of ``ROOT`` where a submission's recipe file waits while Ray packs the working directory."""
NO_AGENT = "No available agent"
"""How Ray's dashboard answers a submission while no job agent has registered."""
PROBE_ID = "rlstack-job-agent-probe"
"""The submission id of the one job (``true``) that ``wait_for_job_agent`` submits to a cluster."""
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
T = TypeVar("T")


class RayUnavailable(Exception):
    """Ray refused a request only for now: its dashboard did not answer, or no job agent has registered yet."""


def for_now(call: Callable[[], T]) -> T:
    """``call()``, with Ray's refusals for now raised as ``RayUnavailable``; every other error as it is."""
    try:
        return call()
    except (ConnectionError, requests.ConnectionError) as exc:  # the builtin from a client's constructor
        raise RayUnavailable(str(exc)) from exc
    except RuntimeError as exc:
        if NO_AGENT in str(exc):
            raise RayUnavailable(str(exc)) from exc
        raise


def with_backoff(
    call: Callable[[], T],
    timeout_s: float,
    on_retry: Callable[[float, RayUnavailable], None] = lambda waited_s, exc: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, called again while it raises ``RayUnavailable``, until ``timeout_s`` has passed.

    The pauses are 0.5 s, doubling up to 8 s, and never past the deadline; the last
    ``RayUnavailable`` is raised once the deadline has passed. ``on_retry(seconds waited so
    far, the refusal)`` is called before each pause.
    """
    start = clock()
    delay = FIRST_DELAY_S
    while True:
        try:
            return call()
        except RayUnavailable as exc:
            left = start + timeout_s - clock()
            if left <= 0:
                raise
            on_retry(clock() - start, exc)
            sleep(min(delay, left))
            delay = min(2 * delay, MAX_DELAY_S)


def wait_for_job_agent(
    address: str,
    timeout_s: float,
    say: Callable[[str], None],
    connect: Callable[[str], JobSubmissionClient] = JobSubmissionClient,
) -> JobSubmissionClient:
    """A client of the dashboard at ``address``, once Ray's job agent there takes submissions.

    The probe is a submission: the job ``PROBE_ID`` running ``true``, the first time on a
    cluster, and after that a refusal that the id exists, which the agent itself answers.
    ``list_jobs`` would not do: the dashboard answers it from Ray's metadata store, with or
    without an agent. Raises ``RayUnavailable`` after ``timeout_s``; ``say`` gets a progress line
    before each retry.
    """

    def probe() -> JobSubmissionClient:
        client = for_now(lambda: connect(address))
        try:
            for_now(lambda: client.submit_job(entrypoint="true", submission_id=PROBE_ID))
        except RuntimeError as exc:
            if f"submission_id {PROBE_ID} already exists" not in str(exc):
                raise
        return client

    def progress(waited_s: float, exc: RayUnavailable) -> None:
        say(f"waiting for Ray's job agent at {address}: {waited_s:.0f} s so far ({str(exc).strip()[:160]})")

    return with_backoff(probe, timeout_s, progress)


class Jobs:
    """Ray's jobs on the cluster's dashboard address, e.g. ``http://127.0.0.1:8265``; ``wait_until_ready`` first."""

    def __init__(self, address: str, connect: Callable[[str], JobSubmissionClient] = JobSubmissionClient):
        self.address = address
        self.connect = connect
        self._client: JobSubmissionClient | None = None

    @property
    def client(self) -> JobSubmissionClient:
        assert self._client is not None, "Jobs used before wait_until_ready"
        return self._client

    def wait_until_ready(self, timeout_s: float, say: Callable[[str], None]) -> None:
        """Block until Ray's job agent takes submissions (``wait_for_job_agent``)."""
        self._client = wait_for_job_agent(self.address, timeout_s, say, self.connect)

    def submit(self, run_id: str, recipe: dict[str, Any], env: dict[str, str], timeout_s: float) -> str:
        """Start ``python -m rlstack.train <recipe file>`` as the job ``run_id``; returns the job id.

        The recipe is written as YAML to ``JOB_RECIPES/<run_id>.yaml`` under ``ROOT`` and so
        travels in the working directory Ray packs and uploads on submission; the file is
        removed here once Ray has it. A refusal for now is retried with backoff for
        ``timeout_s`` (a refused submission created no job, so its id is free for the next
        try), then raised as ``RayUnavailable``.
        """
        recipe_file = f"{JOB_RECIPES}/{run_id}.yaml"
        (ROOT / JOB_RECIPES).mkdir(exist_ok=True)
        (ROOT / recipe_file).write_text(yaml.safe_dump(recipe, sort_keys=False))
        entrypoint = f"python -m rlstack.train {recipe_file}"
        runtime_env = {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env}
        try:
            return with_backoff(
                lambda: for_now(
                    lambda: self.client.submit_job(entrypoint=entrypoint, submission_id=run_id, runtime_env=runtime_env)
                ),
                timeout_s,
            )
        finally:
            (ROOT / recipe_file).unlink(missing_ok=True)

    def status(self, job_id: str) -> tuple[str, str | None]:
        """``(status, message)``; an unknown job counts as failed."""
        try:
            info = for_now(lambda: self.client.get_job_info(job_id))
        except RuntimeError as exc:
            return "failed", f"Ray has no job {job_id!r}: {exc}"
        return STATUS[info.status], info.message

    def logs(self, job_id: str) -> str:
        return for_now(lambda: self.client.get_job_logs(job_id))

    def follow(self, job_id: str) -> AsyncIterator[str]:
        """The job's log as it grows; ``RayUnavailable`` here, before any of it, when the dashboard does not
        answer."""
        self.status(job_id)
        return self.client.tail_job_logs(job_id)

    def stop(self, job_id: str) -> None:
        for_now(lambda: self.client.stop_job(job_id))


def main(argv: list[str] | None = None) -> int:
    """``python -m rlstack.api.jobs ADDRESS TIMEOUT_S``: exit 0 once Ray's job agent at ADDRESS takes submissions."""
    address, timeout_s = sys.argv[1:] if argv is None else argv
    try:
        wait_for_job_agent(address, float(timeout_s), lambda line: print(f"ray head: {line}", flush=True))
    except RayUnavailable as exc:
        print(f"ray head: error: the job agent at {address} took no job in {timeout_s} s: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
