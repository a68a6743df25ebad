"""The run service against a real uvicorn server and a real local Ray."""

import json
import subprocess
import sys

import httpx
import pytest

from rlstack.ray_head import RAY_CLI
from tests.api.conftest import DASHBOARD, TOKEN, tiny, wait_for

pytestmark = pytest.mark.e2e


def sse(client: httpx.Client, path: str) -> list[tuple[str, dict]]:
    """Every event of a stream that ends, as ``(event, data)``."""
    events, event = [], None
    with client.stream("GET", path, timeout=600) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line.removeprefix("data:").strip())))
    return events


def test_health_needs_no_token_and_everything_else_does(service):
    assert httpx.get(f"{service.url}/health").json() == {"status": "ready"}
    for path in ("/v1/runs", "/v1/recipes", "/metrics", "/", "/docs", "/openapi.json"):
        assert httpx.get(f"{service.url}{path}").status_code == 401, path
        assert service.client("wrong-token").get(path).status_code == 401, path
    assert httpx.get(f"{service.url}/v1/runs", params={"token": TOKEN}).status_code == 200
    docs = httpx.get(f"{service.url}/docs", params={"token": TOKEN})
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):  # served here, behind the token
        assert f"/docs/files/{asset}?token=" in docs.text
        assert httpx.get(f"{service.url}/docs/files/{asset}", params={"token": TOKEN}).status_code == 200
    assert httpx.get(f"{service.url}/docs/files/swagger-ui.css").status_code == 401


def test_bad_input_is_refused_and_leaves_no_record(service):
    with service.client() as client:
        before = client.get("/v1/runs").json()["total"]
        bad = client.post("/v1/runs", json={"recipe": {"trainer": {"lrr": 1}, "rollout": {"num_samples": 1}}})
        assert bad.status_code == 422
        locs = [tuple(e["loc"]) for e in bad.json()["detail"]]
        assert ("body", "recipe", "trainer", "lrr") in locs and ("body", "recipe", "rollout") in locs
        assert client.post("/v1/runs", json=tiny("trainer.lrr=1")).status_code == 422
        assert "did you mean 'trainer.lr'" in str(client.post("/v1/runs", json=tiny("trainer.lrr=1")).json())
        assert client.post("/v1/runs", json={"recipe_name": "no_such"}).status_code == 422
        assert client.post("/v1/runs", json={"recipe_name": "../pyproject"}).status_code == 422
        assert client.post("/v1/runs", json={}).status_code == 422
        huge = {"recipe_name": "grpo_tiny_random", "overrides": ["x" * 2_000_000]}
        assert client.post("/v1/runs", json=huge).status_code == 413
        assert client.get("/v1/runs/nope").status_code == 404
        assert client.post("/v1/runs/nope/cancel").status_code == 404
        assert client.get("/v1/runs/nope/events").status_code == 404
        assert client.get("/v1/runs").json()["total"] == before


def test_a_run_is_followed_to_completion_over_sse(service):
    with service.client() as client:
        recipes = {r["name"] for r in client.get("/v1/recipes").json()}
        assert {"grpo_tiny_random", "grpo_arith_smollm2", "sft_arith_smollm2"} <= recipes
        created = client.post("/v1/runs", json=tiny("trainer.num_steps=2", "checkpoint.every_steps=1"))
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        events = sse(client, f"/v1/runs/{run_id}/events")
        statuses = [data["status"] for event, data in events if event == "status"]
        assert statuses[-1] == "succeeded" and "running" in statuses
        metrics = [data for event, data in events if event == "metric"]
        first_done = next(
            i for i, (event, data) in enumerate(events) if event == "status" and data["status"] == "succeeded"
        )
        assert any(event == "metric" for event, _ in events[:first_done])  # reported while it trained
        assert [m["seq"] for m in metrics] == list(range(len(metrics)))
        assert {m["step"] for m in metrics} == {0, 1, 2}
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["step"] == 2 and run["started_at"] and run["ended_at"]
        assert "eval/greedy_accuracy" in run["latest"] and run["recipe"]["trainer"]["num_steps"] == 2
        assert [m["step"] for m in client.get(f"/v1/runs/{run_id}/metrics", params={"since": 2}).json()] == [2, 2]
        checkpoints = client.get(f"/v1/runs/{run_id}/checkpoints").json()
        assert [c["step"] for c in checkpoints] == [1, 2] and "model.safetensors" in checkpoints[1]["files"]
        assert '{"summary": ' in client.get(f"/v1/runs/{run_id}/logs").text
        assert '{"summary": ' in client.get(f"/v1/runs/{run_id}/logs", params={"follow": True}).text
        listed = client.get("/v1/runs", params={"status": "succeeded", "limit": 1}).json()
        assert listed["runs"][0]["id"] == run_id and listed["limit"] == 1
        assert 'rlstack_runs{status="succeeded"}' in client.get("/metrics").text


def test_a_run_can_be_cancelled_twice(service):
    with service.client() as client:
        run_id = client.post("/v1/runs", json=tiny("trainer.num_steps=200")).json()["id"]
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["step"] >= 1)
        assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "stopped", timeout_s=120)
        again = client.post(f"/v1/runs/{run_id}/cancel")
        assert again.status_code == 202 and again.json()["status"] == "stopped"


@pytest.mark.slow
def test_a_run_survives_a_restart_of_the_service(service):
    with service.client() as client:
        run_id = client.post("/v1/runs", json=tiny("trainer.num_steps=6")).json()["id"]
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["step"] >= 1)
    service.stop()
    service.start()
    with service.client() as client:
        assert client.get(f"/v1/runs/{run_id}").status_code == 200
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded")
        steps = {m["step"] for m in client.get(f"/v1/runs/{run_id}/metrics").json()}
        assert steps == set(range(7))  # nothing lost while the service was down


def test_a_plain_ray_job_is_adopted_from_its_run_directory(service, ray_head, tmp_path, pytestconfig):
    job = subprocess.run(
        [*RAY_CLI, "job", "submit", f"--address=http://127.0.0.1:{DASHBOARD}", "--submission-id", "plain-job",
         "--working-dir", ".", "--", "python", "-m", "rlstack.train", "recipes/grpo_tiny_random.yaml",
         f"tracking.run_root={tmp_path}", "tracking.name=plain", "tracking.wandb=disabled"],
        env=ray_head, cwd=pytestconfig.rootpath, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-2000:]
    with service.client() as client:
        adopted = client.post("/v1/runs/adopt", json={"job_id": "plain-job", "run_dir": str(tmp_path / "plain")})
        assert adopted.status_code == 201 and adopted.json()["status"] == "succeeded"
        run = client.get(f"/v1/runs/{adopted.json()['id']}").json()
        assert run["adopted"] and run["step"] == 2
        assert {m["step"] for m in client.get(f"/v1/runs/{run['id']}/metrics").json()} == {0, 1, 2}
        missing = client.post("/v1/runs/adopt", json={"job_id": "no-such-job", "run_dir": str(tmp_path / "plain")})
        assert missing.status_code == 422


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(service, tmp_path):
    """Every operation but submitting runs (a fuzzed valid recipe would start real training) is fuzzed."""
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/openapi.json", "--checks",
         "not_a_server_error", "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "15",
         "--exclude-operation-id", "submit_v1_runs_post", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_the_run_page_draws_live_curves_in_headless_chromium(service, tmp_path):
    with service.client() as client:
        run_id = client.post("/v1/runs", json=tiny("trainer.num_steps=3", "eval.every_steps=1")).json()["id"]
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded")
    url = f"{service.url}/runs/{run_id}?token={TOKEN}"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}/profile",
               "--virtual-time-budget=15000", "--window-size=1400,1000"]  # fmt: skip
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert f"({run_id})" in dom and 'class="status succeeded"' in dom
    shot = tmp_path / "run.png"
    subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round()
    reward_blue = (abs(pixels - [31, 119, 180]).sum(-1) < 30).sum()  # the first series' colour
    sampled_green = (abs(pixels - [44, 160, 44]).sum(-1) < 30).sum()  # accuracy chart: sampled, third series
    assert reward_blue > 200 and sampled_green > 50, (reward_blue, sampled_green)
