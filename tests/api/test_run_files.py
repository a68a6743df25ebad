"""The samples, recipe and files routes, on an adopted run directory, against a fake Ray job client (no Ray)."""

import json
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from rlstack.api.app import Settings, create_app
from rlstack.samples import SampleLog
from tests.api.conftest import TOKEN
from tests.test_samples import step_rollouts


class EndedJobs:
    """Ray's answers for jobs that have ended."""

    address = "fake-ray"

    def wait_until_ready(self, timeout_s: float, say) -> None:
        pass

    def status(self, job_id: str) -> tuple[str, str | None]:
        return "succeeded", None


@pytest.fixture
def run_dir(tmp_path):
    """A GRPO run's directory: samples of steps 1-3 (two groups of two each), a recipe, a summary, a checkpoint,
    a library log, and a file beside it that must not be served."""
    run = tmp_path / "runs" / "a"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "logs").mkdir()
    log = SampleLog(run, num_groups=2)
    for step in (1, 2, 3):
        log.log(step, *step_rollouts(num_groups=3, n=2))
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "grpo-tiny", "trainer": {"lr": 0.001}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "time": 1.0, "eval/greedy_accuracy": 0.5}) + "\n")
    (run / "summary.json").write_text(json.dumps({"steps": 3}))
    (run / "checkpoints" / "step_2" / "model.safetensors").write_bytes(b"\0" * 10)
    (run / "logs" / "engine-0.log").write_text("INFO engine started\n")
    (tmp_path / "runs" / "secret.txt").write_text("not the run's")
    return run


@pytest.fixture
def client(tmp_path, run_dir):
    settings = Settings(TOKEN, f"sqlite:///{tmp_path}/service.db", "fake-ray", tmp_path / "runs", "http://fake")
    with TestClient(create_app(settings, EndedJobs())) as client:  # type: ignore[arg-type]
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        deadline = time.time() + 30
        while client.get("/health").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        yield client


def adopt(client: TestClient, run_dir) -> str:
    adopted = client.post("/v1/runs/adopt", json={"job_id": "plain-job", "run_dir": str(run_dir)})
    assert adopted.status_code == 201, adopted.text
    return adopted.json()["id"]


def test_samples_are_served_by_step_and_default_to_the_latest(client, run_dir):
    run_id = adopt(client, run_dir)
    latest = client.get(f"/v1/runs/{run_id}/samples").json()
    assert latest["steps"] == [1, 2, 3] and latest["step"] == 3
    assert [(s["group"], s["index"]) for s in latest["samples"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = latest["samples"][0]
    assert (first["prompt"], first["answer"], first["completion"], first["reward"]) == ("q0", "0", "a0.0", 0.5)
    assert first["scores"] == {"correct": 0.0, "format": 0.5}
    assert (first["advantage"], first["finish_reason"], first["policy_version"]) == (0.0, "stop", 3)
    asked = client.get(f"/v1/runs/{run_id}/samples", params={"step": 2}).json()
    assert asked["step"] == 2 and {s["step"] for s in asked["samples"]} == {2}
    assert client.get(f"/v1/runs/{run_id}/samples", params={"step": 7}).json() == {
        "steps": [1, 2, 3], "step": 7, "samples": []
    }  # fmt: skip
    assert client.get(f"/v1/runs/{run_id}/samples", params={"step": -1}).status_code == 422
    assert client.get("/v1/runs/nope/samples").status_code == 404


def test_a_run_without_samples_has_no_steps(client, run_dir):
    (run_dir / "samples.jsonl").unlink()
    assert client.get(f"/v1/runs/{adopt(client, run_dir)}/samples").json() == {"steps": [], "step": None, "samples": []}


def test_the_recipe_is_the_one_the_run_saved(client, run_dir):
    saved = client.get(f"/v1/runs/{adopt(client, run_dir)}/recipe").json()
    assert saved == {"recipe": {"name": "grpo-tiny", "trainer": {"lr": 0.001}}, "source": "run_dir"}


def test_the_run_directorys_files_logs_and_checkpoints_are_listed_and_served(client, run_dir):
    run_id = adopt(client, run_dir)
    listed = {f["path"]: f["num_bytes"] for f in client.get(f"/v1/runs/{run_id}/files").json()}
    assert {"summary.json", "recipe.yaml", "samples.jsonl", "logs/engine-0.log"} <= set(listed)
    assert listed["checkpoints/step_2/model.safetensors"] == 10
    assert client.get(f"/v1/runs/{run_id}/files/summary.json").json() == {"steps": 3}
    assert client.get(f"/v1/runs/{run_id}/files/logs/engine-0.log").text == "INFO engine started\n"
    for outside in ("../secret.txt", "..%2Fsecret.txt", "checkpoints", "/etc/passwd", "nope.json"):
        assert client.get(f"/v1/runs/{run_id}/files/{outside}").status_code == 404, outside
    assert client.get(f"/v1/runs/{run_id}/files/summary.json", headers={"Authorization": ""}).status_code == 401


def test_the_page_is_one_file_that_fetches_nothing_from_elsewhere(client):
    page = client.get("/").text
    assert "<script>" in page and "<canvas" in page
    for outside in ("src=", "http://", "https://", "@import", "url("):
        assert outside not in page, outside
