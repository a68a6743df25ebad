"""Waiting for Ray's job agent and retrying its refusals for now, against a fake Ray job client (no Ray)."""

import argparse
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from ray.job_submission import JobStatus

from rlstack.api import client
from rlstack.api.app import Settings, create_app
from rlstack.api.jobs import PROBE_ID, Jobs, RayUnavailable, for_now, wait_for_job_agent, with_backoff
from tests.api.conftest import TOKEN, tiny

NO_AGENT = "Request failed with status code 500: No available agent to submit job, please try again later.."


class FakeClock:
    """``sleep`` advances ``clock``; the pauses are recorded."""

    def __init__(self):
        self.now, self.pauses = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class FakeRay:
    """A ``JobSubmissionClient`` factory for a head whose job agent registers when ``agent_up`` is set."""

    def __init__(self, refusals_per_submission: int = 0):
        self.agent_up = threading.Event()
        self.jobs: dict[str, str] = {}
        self.refusals_left = self.refusals_per_submission = refusals_per_submission

    def __call__(self, address: str) -> "FakeRay":
        return self

    def submit_job(self, entrypoint: str, submission_id: str, runtime_env: dict | None = None) -> str:
        if not self.agent_up.is_set():
            raise RuntimeError(NO_AGENT)
        if submission_id != PROBE_ID and self.refusals_left > 0:
            self.refusals_left -= 1
            raise RuntimeError(NO_AGENT)
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: submission_id {submission_id} already exists")
        self.jobs[submission_id] = entrypoint
        self.refusals_left = self.refusals_per_submission
        return submission_id

    def get_job_info(self, job_id: str) -> SimpleNamespace:
        return SimpleNamespace(status=JobStatus.PENDING, message=None)


def refused_until(num_refusals: int, error: Exception):
    calls = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= num_refusals:
            raise error
        return "taken"

    return call, calls


def test_a_refusal_for_now_is_retried_with_doubling_pauses_until_taken():
    fake = FakeClock()
    call, calls = refused_until(6, RayUnavailable(NO_AGENT))
    assert with_backoff(call, 60, sleep=fake.sleep, clock=fake.clock) == "taken"
    assert fake.pauses == [0.5, 1, 2, 4, 8, 8] and len(calls) == 7  # doubling from 0.5 s, capped at 8 s


def test_a_refusal_that_outlasts_the_deadline_is_raised_and_no_pause_passes_it():
    fake = FakeClock()
    call, _ = refused_until(100, RayUnavailable(NO_AGENT))
    with pytest.raises(RayUnavailable, match="No available agent"):
        with_backoff(call, 5, sleep=fake.sleep, clock=fake.clock)
    assert fake.pauses == [0.5, 1, 2, 1.5] and fake.now == 5


def test_a_lasting_error_is_raised_at_once():
    fake = FakeClock()
    bad = RuntimeError("Request failed with status code 400: the runtime_env is invalid")
    call, calls = refused_until(1, bad)
    with pytest.raises(RuntimeError, match="runtime_env"):
        with_backoff(lambda: for_now(call), 60, sleep=fake.sleep, clock=fake.clock)
    assert fake.pauses == [] and len(calls) == 1


@pytest.mark.parametrize(
    "error",
    [RuntimeError(NO_AGENT), ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265.")],
)
def test_no_agent_and_no_dashboard_are_refusals_for_now(error):
    call, _ = refused_until(1, error)
    with pytest.raises(RayUnavailable):
        for_now(call)
    assert for_now(call) == "taken"


def test_the_probe_job_is_submitted_once_and_its_existing_id_counts_as_ready():
    ray = FakeRay()
    ray.agent_up.set()
    lines: list[str] = []
    assert wait_for_job_agent("http://head:8265", 1, lines.append, connect=ray) is ray
    assert wait_for_job_agent("http://head:8265", 1, lines.append, connect=ray) is ray  # "already exists"
    assert ray.jobs == {PROBE_ID: "true"} and lines == []


def test_waiting_for_the_agent_says_how_long_it_has_waited():
    ray = FakeRay()
    lines: list[str] = []
    threading.Timer(1.0, ray.agent_up.set).start()
    wait_for_job_agent("http://head:8265", 10, lines.append, connect=ray)
    assert len(lines) >= 2 and lines[0].startswith("waiting for Ray's job agent at http://head:8265: 0 s so far")
    assert all("No available agent" in line for line in lines)


def service(tmp_path, ray: FakeRay, **settings) -> TestClient:
    app = create_app(
        Settings(token=TOKEN, db_url=f"sqlite:///{tmp_path}/service.db", ray_address="http://head:8265",
                 runs_dir=tmp_path / "runs", public_url="http://service", **settings),
        jobs=Jobs("http://head:8265", connect=ray),
    )  # fmt: skip
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def wait_until_ready(http: TestClient) -> None:
    deadline = time.time() + 10
    while http.get("/health").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.05)


def test_the_service_is_starting_until_the_agent_takes_a_job_and_refuses_ray_routes_till_then(tmp_path):
    ray = FakeRay()
    with service(tmp_path, ray) as http:
        health = http.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "starting"}
        refused = http.post("/v1/runs", json=tiny())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert "waiting for Ray's job agent at http://head:8265" in refused.json()["detail"]
        assert http.post("/v1/runs/nope/cancel").status_code == 503
        assert http.get("/v1/runs").status_code == 200  # the store needs no Ray
        ray.agent_up.set()
        wait_until_ready(http)
        assert http.get("/health").json() == {"status": "ready"}
        created = http.post("/v1/runs", json=tiny())
        assert created.status_code == 201, created.text
        assert created.json()["id"] in ray.jobs


def test_a_submission_refused_for_now_is_retried_before_the_client_hears_of_it(tmp_path):
    ray = FakeRay(refusals_per_submission=2)
    ray.agent_up.set()
    with service(tmp_path, ray) as http:
        wait_until_ready(http)
        begin = time.perf_counter()
        created = http.post("/v1/runs", json=tiny())
        assert created.status_code == 201, created.text
        assert 1.4 < time.perf_counter() - begin < 5  # paused 0.5 s, then 1 s


def test_a_refusal_past_the_submit_timeout_is_a_503_with_retry_after_and_no_record(tmp_path):
    ray = FakeRay(refusals_per_submission=1000)
    ray.agent_up.set()
    with service(tmp_path, ray, submit_timeout_s=0.3) as http:
        wait_until_ready(http)
        refused = http.post("/v1/runs", json=tiny())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert "Ray did not take the job within 0.3 s" in refused.json()["detail"]
        assert http.get("/v1/runs").json()["total"] == 0


def test_the_service_gives_up_after_its_ready_timeout(tmp_path):
    ray = FakeRay()
    gave_up = threading.Event()
    app = create_app(
        Settings(token=TOKEN, db_url=f"sqlite:///{tmp_path}/service.db", ray_address="http://head:8265",
                 runs_dir=tmp_path / "runs", public_url="http://service", ready_timeout_s=0.2),
        jobs=Jobs("http://head:8265", connect=ray), on_ready_timeout=lambda exc: gave_up.set(),
    )  # fmt: skip
    with TestClient(app) as http:
        assert gave_up.wait(5)
        assert http.get("/health").status_code == 503


def cli_submit(responses: list[httpx.Response], retry_for: float) -> tuple[httpx.Response, list[float], int]:
    """``rlstack runs submit`` against canned responses; the last one repeats."""
    fake = FakeClock()
    posts = []

    def answer(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return responses[min(len(posts), len(responses)) - 1]

    with httpx.Client(base_url="http://service", transport=httpx.MockTransport(answer)) as http:
        args = argparse.Namespace(recipe="grpo_tiny_random", overrides=[], retry_for=retry_for)
        response = client.submit(http, args, sleep=fake.sleep, clock=fake.clock)
    return response, fake.pauses, len(posts)


STARTING = httpx.Response(503, json={"detail": "the service is starting"}, headers={"Retry-After": "5"})


def test_the_cli_waits_out_retry_after_then_gets_its_run():
    response, pauses, num_posts = cli_submit([STARTING, STARTING, httpx.Response(201, json={"id": "r1"})], 60)
    assert response.status_code == 201 and pauses == [5, 5] and num_posts == 3


def test_the_cli_stops_trying_when_the_next_retry_after_would_pass_its_bound():
    response, pauses, num_posts = cli_submit([STARTING], 12)
    assert response.status_code == 503 and pauses == [5, 5] and num_posts == 3


def test_the_cli_takes_a_503_without_retry_after_as_final():
    response, pauses, num_posts = cli_submit([httpx.Response(503, json={"detail": "Ray did not take the job"})], 60)
    assert response.status_code == 503 and pauses == [] and num_posts == 1
