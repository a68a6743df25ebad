"""A client's mistakes get a 4xx naming the field, never a 500; a Ray that does not answer gets 503.

Against the real app and a fake Ray job client (no Ray), as in ``test_readiness.py``.
"""

import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from fastapi.testclient import TestClient
from ray.job_submission import JobStatus

from rlstack.api import serve
from rlstack.api.app import Settings, create_app
from rlstack.api.jobs import JOB_RECIPES, PROBE_ID, ROOT, Jobs
from rlstack.api.store import TERMINAL, Store
from tests.api.conftest import TOKEN, tiny
from tests.faults.test_hostile_recipes import BOMB


class FakeRay:
    """A ``JobSubmissionClient`` that takes every job, keeping the recipe file each was given, until ``down``."""

    def __init__(self):
        self.down = False
        self.entrypoints: dict[str, str] = {}
        self.recipes: dict[str, str] = {}

    def __call__(self, address: str) -> "FakeRay":
        return self

    def refuse_while_down(self) -> None:
        if self.down:
            raise requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")

    def submit_job(self, entrypoint: str, submission_id: str, runtime_env: dict | None = None) -> str:
        self.refuse_while_down()
        if submission_id != PROBE_ID:
            self.entrypoints[submission_id] = entrypoint
            self.recipes[submission_id] = (Path(runtime_env["working_dir"]) / entrypoint.split()[-1]).read_text()
        return submission_id

    def get_job_info(self, job_id: str) -> SimpleNamespace:
        self.refuse_while_down()
        return SimpleNamespace(status=JobStatus.RUNNING, message=None)

    def get_job_logs(self, job_id: str) -> str:
        self.refuse_while_down()
        return "log\n"

    def stop_job(self, job_id: str) -> None:
        self.refuse_while_down()


@pytest.fixture
def ray():
    return FakeRay()


@pytest.fixture
def http(tmp_path, ray):
    app = create_app(
        Settings(token=TOKEN, db_url=f"sqlite:///{tmp_path}/service.db", ray_address="http://head:8265",
                 runs_dir=tmp_path / "runs", public_url="http://service", submit_timeout_s=0.3, reconcile_s=600),
        jobs=Jobs("http://head:8265", connect=ray),
    )  # fmt: skip
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        deadline = time.time() + 10
        while client.get("/health").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        yield client


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["tracking=5"], "tracking"),
        (["trainer.lr=[1e-3"], "trainer.lr"),
        (["trainer.lr=.nan"], "trainer.lr"),
        (["rollout.num_prompts=0"], "rollout.num_prompts"),
        (["trainer.num_steps=-5"], "trainer.num_steps"),
        (["checkpoint.uri=nosuchproto://x"], "checkpoint.uri"),
        ([f"trainer.deepspeed.config={BOMB}"], "trainer.deepspeed.config"),
        (["model=[1, 2]"], "model"),
    ],
)
def test_a_bad_override_is_a_422_naming_the_key_and_no_run(http, ray, overrides, named):
    refused = http.post("/v1/runs", json=tiny(*overrides))
    assert refused.status_code == 422, refused.text
    assert named in refused.text and len(refused.text) < 3000
    assert http.get("/v1/runs").json()["total"] == 0 and not ray.entrypoints


def test_a_bad_field_in_a_recipe_body_is_a_422_at_its_location(http):
    refused = http.post("/v1/runs", json={"recipe": {"rollout": {"top_p": 0}, "eval": {"num_samples": 0}}})
    assert refused.status_code == 422
    locs = {tuple(e["loc"]) for e in refused.json()["detail"]}
    assert {("body", "recipe", "rollout", "top_p"), ("body", "recipe", "eval", "num_samples")} <= locs


def test_a_200_kb_recipe_reaches_its_job_as_a_file_not_on_the_command_line(http, ray):
    prompt = " ".join(["Answer briefly."] * 12_500)  # 200 KB: one command-line argument holds at most 128 KiB
    created = http.post("/v1/runs", json=tiny(f"data.system_prompt={prompt}"))
    assert created.status_code == 201, created.text[:500]
    run_id = created.json()["id"]
    assert ray.entrypoints[run_id] == f"python -m rlstack.train {JOB_RECIPES}/{run_id}.yaml"
    assert yaml.safe_load(ray.recipes[run_id])["data"]["system_prompt"] == prompt
    assert not (ROOT / JOB_RECIPES / f"{run_id}.yaml").exists()  # gone once Ray had the package


def adopted(http, tmp_path: Path, recipe_text: str) -> tuple[int, str]:
    run_dir = tmp_path / "adopted"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe_text)
    answer = http.post("/v1/runs/adopt", json={"job_id": "raysubmit_1", "run_dir": str(run_dir)})
    return answer.status_code, answer.text


@pytest.mark.parametrize("text", ["- a list\n- of things\n", "just a string\n", "name: [unclosed\n", BOMB])
def test_adopting_a_run_whose_recipe_is_no_mapping_is_a_422(http, tmp_path, text):
    code, body = adopted(http, tmp_path, text)
    assert code == 422 and "run_dir" in body and len(body) < 3000, body


def test_checkpoints_lists_only_step_directories(http, tmp_path):
    code, body = adopted(http, tmp_path, "name: adopted\n")
    assert code == 201, body
    checkpoints = tmp_path / "adopted/checkpoints"
    for name in ("step_2", "step_10", "step_x", "step_"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "step_2/config.json").write_text("{}")
    (checkpoints / "step_7").write_text("a file, not a checkpoint")
    run_id = http.get("/v1/runs").json()["runs"][0]["id"]
    listed = http.get(f"/v1/runs/{run_id}/checkpoints")
    assert listed.status_code == 200, listed.text
    assert [(c["step"], c["files"]) for c in listed.json()] == [(2, ["config.json"]), (10, [])]


def test_routes_that_need_ray_answer_503_while_it_does_not_answer(http, ray):
    run_id = http.post("/v1/runs", json=tiny()).json()["id"]
    ray.down = True
    for method, path in [("GET", f"/v1/runs/{run_id}/logs"), ("GET", f"/v1/runs/{run_id}/logs?follow=true"),
                         ("POST", f"/v1/runs/{run_id}/cancel"), ("POST", "/v1/runs")]:  # fmt: skip
        answer = http.request(method, path, json=tiny() if path == "/v1/runs" else None)
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert answer.headers["Retry-After"] == "2"
    assert http.get(f"/v1/runs/{run_id}").status_code == 200  # the store needs no Ray
    ray.down = False
    assert http.get(f"/v1/runs/{run_id}/logs").text == "log\n"


def test_the_event_stream_is_documented_as_text_event_stream(http):
    spec = http.get("/openapi.json").json()
    content = spec["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


def test_the_database_is_created_and_kept_with_mode_0600(tmp_path):
    Store(f"sqlite:///{tmp_path}/new.db")
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600
    loose = tmp_path / "old.db"
    Store(f"sqlite:///{loose}")
    loose.chmod(0o644)
    Store(f"sqlite:///{loose}")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_a_token_file_others_may_read_and_a_short_token_get_warnings_and_an_empty_one_is_refused(tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text("s" * 32)
    token_file.chmod(0o644)
    assert serve.stored_token(token_file) == "s" * 32
    assert "has mode 0644, so others may read it" in capsys.readouterr().err
    token_file.chmod(0o600)
    serve.stored_token(token_file)
    assert capsys.readouterr().err == ""
    assert serve.usable("short") and "has 5 characters; use at least 16" in capsys.readouterr().err
    assert serve.usable("s" * 16) and capsys.readouterr().err == ""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    assert serve.main(["--token-file", str(empty), "--db", f"sqlite:///{tmp_path}/s.db"]) == 2
    assert "the bearer token is empty" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_200_kb_recipe_trains_through_the_real_service_and_ray(service):
    from tests.api.conftest import wait_for

    padding = {f"key_{i}": "x" * 1000 for i in range(200)}  # unused by the fsdp2 backend
    with service.client() as client:
        created = client.post("/v1/runs", json=tiny("trainer.num_steps=1", f"trainer.deepspeed.config={padding}"))
        assert created.status_code == 201, created.text[:500]
        run_id = created.json()["id"]
        run = wait_for(lambda: (r := client.get(f"/v1/runs/{run_id}").json())["status"] in TERMINAL and r, 600)
        assert run["status"] == "succeeded", (run["message"], client.get(f"/v1/runs/{run_id}/logs").text[-3000:])
        assert len(run["recipe"]["trainer"]["deepspeed"]["config"]) == 200
