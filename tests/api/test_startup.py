"""``rlstack serve`` where no Ray runs: it starts a head, and a run submitted the moment it answers is taken."""

import json
import subprocess
import sys
import time

import pytest

from rlstack.ray_head import RAY_CLI, cluster_env
from tests.api.conftest import TOKEN, Service, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def fresh_service(tmp_path, pytestconfig):
    """A service not told where Ray is; it starts a head on Ray's default ports, stopped afterwards."""
    service = Service(pytestconfig.rootpath, tmp_path, ray_address=None)
    yield service
    service.stop()
    subprocess.run([*RAY_CLI, "stop", "--force"], env=cluster_env(), check=False, capture_output=True)


def runs(service: Service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlstack.cli", "runs", "--url", service.url, "--token", TOKEN, *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def show(service: Service, run_id: str) -> dict:
    return json.loads(runs(service, "show", run_id).stdout)


@pytest.mark.parametrize("attempt", range(5))
def test_a_run_submitted_the_moment_a_fresh_service_answers_is_taken(fresh_service, attempt):
    begin = time.perf_counter()
    fresh_service.launch()
    while fresh_service.health() is None:
        assert fresh_service.process is not None and fresh_service.process.poll() is None, fresh_service.log
        assert time.perf_counter() - begin < 180, fresh_service.log
        time.sleep(0.05)
    answered_s = time.perf_counter() - begin
    health = fresh_service.health()
    submitted = runs(fresh_service, "submit", "grpo_tiny_random", "tracking.wandb=disabled")
    assert submitted.returncode == 0, submitted.stderr + fresh_service.log
    taken_s = time.perf_counter() - begin
    run_id = json.loads(submitted.stdout)["id"]
    status = wait_for(lambda: (s := show(fresh_service, run_id)["status"]) != "pending" and s)
    assert status in ("running", "succeeded"), fresh_service.log
    ready = next(line for line in fresh_service.log.splitlines() if line.startswith("rlstack serve: ready"))
    print(
        f"\nattempt {attempt}: answered after {answered_s:.1f} s (health {health}), run taken after {taken_s:.1f} s "
        f"and {status} after {time.perf_counter() - begin:.1f} s; {ready}; submit retries: "
        f"{submitted.stderr.count('trying again')}"
    )
    assert "Started a local Ray" not in fresh_service.log and "starting a local head" in fresh_service.log
