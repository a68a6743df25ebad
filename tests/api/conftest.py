"""A real Ray head and a real ``rlstack serve`` (uvicorn) in a subprocess, for the service tests."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rlstack.ray_head import RAY_CLI, cluster_env, start_head

TOKEN = "test-token-0123456789"
DASHBOARD = 8311


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """``rlstack serve`` as a subprocess that can be stopped and started again on the same database.

    With ``ray_address=None`` it is not told where Ray is, so it starts a head of its own
    on Ray's default ports when none runs there.
    """

    def __init__(self, root: Path, state: Path, ray_address: str | None = f"http://127.0.0.1:{DASHBOARD}"):
        self.root, self.state, self.ray_address = root, state, ray_address
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return (self.state / "service.log").read_text()

    def launch(self) -> None:
        """Start the process, and return at once."""
        command = [
            sys.executable, "-m", "rlstack.api.serve", "--port", str(self.port), "--token", TOKEN,
            "--db", f"sqlite:///{self.state}/service.db", "--runs-dir", str(self.state / "runs"),
            *(["--ray-address", self.ray_address] if self.ray_address else []),
        ]  # fmt: skip
        log = (self.state / "service.log").open("a")
        self.process = subprocess.Popen(command, cwd=self.root, env=cluster_env(), stdout=log, stderr=log)

    def health(self) -> int | None:
        """The status code of ``/health``, or None while nothing listens."""
        try:
            return httpx.get(f"{self.url}/health").status_code
        except httpx.TransportError:
            return None

    def start(self, timeout_s: float = 120) -> None:
        """Launch, and return once ``/health`` says ready."""
        self.launch()
        deadline = time.time() + timeout_s
        while self.health() != 200:
            assert self.process is not None
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(self.log[-3000:])
            time.sleep(0.3)

    def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def client(self, token: str = TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
def ray_head():
    env = cluster_env()
    start_head(env, "--num-cpus=2", "--port=6411", f"--dashboard-port={DASHBOARD}", "--include-dashboard=true",
               f"--object-store-memory={2**30}")  # fmt: skip
    yield env
    subprocess.run([*RAY_CLI, "stop", "--force"], env=env, check=False, capture_output=True)


@pytest.fixture(scope="module")
def service(ray_head, tmp_path_factory, pytestconfig):
    """One service per test module; the Ray head stops when the module ends, before other tests start theirs."""
    running = Service(pytestconfig.rootpath, tmp_path_factory.mktemp("service"))
    running.start()
    yield running
    running.stop()


def tiny(*overrides: str) -> dict:
    """A request for the tiny recipe, with wandb off."""
    return {"recipe_name": "grpo_tiny_random", "overrides": ["tracking.wandb=disabled", *overrides]}


def wait_for(check, timeout_s: float = 300, every_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s")
