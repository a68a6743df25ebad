"""The run service against a real uvicorn server and a real local Ray."""

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rlstack.ray_head import RAY_CLI
from tests.api.chromium import Chromium
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
        samples = client.get(f"/v1/runs/{run_id}/samples").json()  # the controller kept every group: 4 of 4 samples
        assert samples["steps"] == [1, 2] and len(samples["samples"]) == 16 and samples["samples"][0]["scores"]
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


def colour_pixels(png, rgb: tuple[int, int, int]) -> int:
    """How many pixels of a screenshot are within a small distance of ``rgb``."""
    import matplotlib.image

    pixels = (matplotlib.image.imread(png)[..., :3] * 255).round()
    return int((abs(pixels - rgb).sum(-1) < 30).sum())


def choose(browser: Chromium, selector: str, value: str, event: str = "change") -> None:
    """Set a control's value as a user would, firing ``event``."""
    browser.evaluate(
        f"{{ const e = document.querySelector({json.dumps(selector)}); e.value = {json.dumps(value)}; "
        f"e.dispatchEvent(new Event({json.dumps(event)})) }}"
    )


def text(browser: Chromium, selector: str) -> str:
    return browser.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


CANVASES = "JSON.stringify([...document.querySelectorAll('#charts canvas')].map(c => ({...c.dataset})))"
LOG_LINES = "document.getElementById('logs').textContent.split('\\n')"
LOADED = (  # the last record, the final evaluation at step 3, is drawn
    "document.querySelector('#status.succeeded') && document.querySelectorAll('.group').length && "
    "document.getElementById('logs').textContent && "
    "[...document.querySelectorAll('#charts canvas')].at(-1).dataset.series.includes('time/eval@0,2,3')"
)


@pytest.mark.slow
def test_the_run_page_draws_curves_samples_recipe_files_and_logs_in_headless_chromium(service, tmp_path):
    with service.client() as client:
        ids = []
        for overrides in (
            ("trainer.num_steps=3", "eval.every_steps=2", "checkpoint.every_steps=2"),
            ("trainer.num_steps=2", "trainer.lr=5e-4"),
        ):  # one after the other: two runs at once on the 2 CPUs of the head would wait on each other's resources
            ids.append(client.post("/v1/runs", json=tiny(*overrides)).json()["id"])
            wait_for(lambda: client.get(f"/v1/runs/{ids[-1]}").json()["status"] == "succeeded")
    run_id, other = ids
    check_the_run_page(service.url, run_id, other, tmp_path)


def check_the_run_page(url: str, run_id: str, other: str, tmp_path: Path) -> None:
    """The pages of ``run_id`` (3 steps, held-out accuracy every 2, a checkpoint every 2) and of its comparison with
    ``other`` (2 steps at ``trainer.lr=5e-4``); screenshots in ``tmp_path``."""
    with Chromium(tmp_path / "profile") as browser:
        browser.open(f"{url}/runs/{run_id}?token={TOKEN}")
        browser.wait_for(LOADED)
        reward, accuracy, loss, phases = json.loads(browser.evaluate(CANVASES))
        assert reward["title"] == "reward" and reward["xticks"] == "1,2,3" and len(reward["yticks"].split(",")) >= 3
        held_out = dict(s.split("@") for s in accuracy["series"].split(";"))  # each metric at its own steps
        assert held_out["accuracy"] == "1,2,3"
        assert held_out["eval/greedy_accuracy"] == held_out["eval/sampled_accuracy"] == "0,2,3"
        assert {"time/generate@1,2,3", "time/train@1,2,3", "time/eval@0,2,3"} <= set(phases["series"].split(";"))
        assert loss["series"] == "loss@1,2,3"

        keys = browser.evaluate("[...document.querySelectorAll('#pick option')].map(o => o.value)")
        assert {"reward/mean", "throughput/generate_tok_s", "time/sync", "response_length", "grad_norm"} <= set(keys)
        choose(browser, "#pick select", "response_length")
        browser.evaluate("document.querySelector('#pick .add').click()")
        picked = json.loads(browser.evaluate(CANVASES))[-1]
        assert picked["title"] == "response_length" and picked["series"] == "response_length@1,2,3"

        box = json.loads(
            browser.evaluate("JSON.stringify(document.querySelector('#charts canvas').getBoundingClientRect())")
        )
        browser.move_mouse(box["x"] + box["width"] - 20, box["y"] + box["height"] / 2)  # over the last step
        assert re.fullmatch(r"step 3 · reward/mean -?[\d.e+-]+", text(browser, ".readout"))

        assert text(browser, "#sample-label").startswith("step 3 (3 of 3")
        pairs = browser.evaluate(
            "[...document.querySelectorAll('.group')].map(g => g.querySelectorAll('.best, .worst').length)"
        )
        assert pairs == [2, 2, 2, 2]  # every prompt of the step (4, fewer than num_logged_samples): best and worst
        meta = text(browser, ".sample.best .meta")
        assert "exact_match" in meta and "policy v2" in meta and "advantage" in meta
        choose(browser, "#sample-step", "0", event="input")
        browser.wait_for("document.getElementById('sample-label').textContent.startsWith('step 1 ')")
        assert "policy v0" in text(browser, ".sample.worst .meta")

        recipe = text(browser, "#recipe")
        assert "num_steps: 3" in recipe and 'engine: "hf"' in recipe and "num_logged_samples: 8" in recipe
        links = browser.evaluate("[...document.querySelectorAll('#links a')].map(a => a.href)")
        summary = next(link for link in links if "/files/summary.json?token=" in link)
        assert httpx.get(summary).json()["steps"] == 3
        assert any("/files/checkpoints/step_2/model.safetensors?token=" in link for link in links)

        every_line = browser.evaluate(LOG_LINES)
        assert any(line.startswith('{"summary": ') for line in every_line) and not any(
            "\x1b" in line for line in every_line
        )
        choose(browser, "#log-filter", "rlstack")
        own = browser.evaluate(LOG_LINES)
        assert any(line.startswith("step 3 ") for line in own) and any(line.startswith('{"summary": ') for line in own)
        assert set(own) <= set(every_line) and not any(" pid=" in line for line in own)
        choose(browser, "#log-filter", "library")
        assert not any(line.startswith(("step ", '{"summary": ')) for line in browser.evaluate(LOG_LINES))
        choose(browser, "#log-filter", "all")
        sources = browser.evaluate("[...document.querySelectorAll('#log-source option')].map(o => o.value)")
        assert {"logs/driver.log", "logs/trainer-0.log", "logs/rollout-0.log"} <= set(sources)  # the quiet console's
        driver_log = httpx.get(f"{url}/v1/runs/{run_id}/files/logs/driver.log", params={"token": TOKEN}).text
        choose(browser, "#log-source", "logs/driver.log")
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", driver_log)  # as the page shows it: escapes rendered
        browser.wait_for(f"document.getElementById('logs').textContent === {json.dumps(shown)}")
        browser.evaluate("document.getElementById('logs').textContent = ''; document.getElementById('follow').click()")
        browser.wait_for("document.getElementById('logs').textContent.includes('{\"summary\": ')")  # streamed

        charts = browser.screenshot(tmp_path / "charts.png", "#charts")
        assert colour_pixels(charts, (31, 119, 180)) > 200 and colour_pixels(charts, (44, 160, 44)) > 50
        samples = browser.screenshot(tmp_path / "samples.png", "#groups")
        assert colour_pixels(samples, (44, 160, 44)) > 100 and colour_pixels(samples, (214, 39, 40)) > 100
        browser.evaluate("window.scrollTo(0, 0)")
        browser.screenshot(tmp_path / "run_page.png")

        browser.open(f"{url}/?compare={run_id},{other}&token={TOKEN}")
        browser.wait_for(
            "document.querySelectorAll('#compare-charts canvas').length === 3 && !!document.querySelector('.diff')"
        )
        differ = browser.evaluate("[...document.querySelectorAll('.diff tr td:first-child')].map(td => td.textContent)")
        assert set(differ) == {
            "trainer.num_steps",
            "trainer.lr",
            "tracking.name",
            "checkpoint.every_steps",
            "eval.every_steps",
        }
        overlay = browser.evaluate("document.querySelector('#compare-charts canvas').dataset.series")
        assert overlay.count("@") == 2 and run_id in overlay and other in overlay
        assert browser.evaluate("document.querySelectorAll('#runs input:checked').length") == 2
        browser.screenshot(tmp_path / "compare.png")
