"""``rlstack runs`` against the live service, and ``rlstack serve``'s token and bind rules."""

import json
import stat
import subprocess
import sys

import pytest

from rlstack.api.serve import is_loopback, stored_token
from tests.api.conftest import TOKEN, wait_for


def runs(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlstack.cli", "runs", "--url", service.url, "--token", TOKEN, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_the_cli_client_runs_sft_and_dpo_through_the_service(service, mode):
    submitted = runs(service, "submit", "grpo_tiny_random", f"algorithm.name={mode}", "tracking.wandb=disabled")
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["id"]
    assert run_id in runs(service, "list").stdout
    shown = wait_for(
        lambda: (
            json.loads(runs(service, "show", run_id).stdout)["status"] in ("succeeded", "failed")
            and runs(service, "show", run_id)
        )
    )
    run = json.loads(shown.stdout)
    assert run["status"] == "succeeded" and run["recipe"]["algorithm"]["name"] == mode
    assert "eval/loss" in run["latest"]
    assert '{"summary": ' in runs(service, "logs", run_id).stdout
    assert runs(service, "cancel", run_id).returncode == 0  # an ended run: a no-op
    missing = runs(service, "show", "no-such-run")
    assert missing.returncode == 2 and "404" in missing.stderr


def test_a_generated_token_is_kept_with_mode_0600(tmp_path):
    path = tmp_path / "state" / "service_token"
    token = stored_token(path)
    assert len(token) >= 32 and stored_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_binding_beyond_loopback_needs_an_explicit_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    result = subprocess.run(
        [sys.executable, "-m", "rlstack.cli", "serve", "--host", "0.0.0.0", "--token-file", str(tmp_path / "t")],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2 and "needs --token" in result.stderr
    assert not (tmp_path / "t").exists()
