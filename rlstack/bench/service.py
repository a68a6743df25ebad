"""run-service latency under 50 clients, and SSE delay, while a run trains

Starts a Ray head and ``rlstack serve`` on this machine, launches the tiny recipe for
long enough to measure during its training, and reports p50 and p99 latency of
``GET /v1/runs/{id}`` and ``GET /v1/runs/{id}/metrics?since=`` from concurrent clients,
and the delay from a metric being logged by the controller to it arriving over SSE.
"""

import argparse
import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from rlstack.bench.result import record_result
from rlstack.ray_head import RAY_CLI, cluster_env, start_head

DASHBOARD = 8321


def start_service(state: Path, port: int, token: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "rlstack.api.serve", "--port", str(port), "--token", token,
               "--ray-address", f"http://127.0.0.1:{DASHBOARD}", "--db", f"sqlite:///{state}/service.db",
               "--runs-dir", str(state / "runs")]  # fmt: skip
    process = subprocess.Popen(command, env=cluster_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        time.sleep(0.3)  # after a refused connection and after 503 ``starting`` alike
    raise RuntimeError("the service did not start")


async def sse_delays(session: aiohttp.ClientSession, run_id: str, until: float) -> list[float]:
    """Seconds from each record's log time to its arrival over SSE, for records logged while connected."""
    delays: list[float] = []
    connected = time.time()
    async with session.get(f"/v1/runs/{run_id}/events", timeout=aiohttp.ClientTimeout()) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:") and '"seq"' in line:
                point = json.loads(line.removeprefix("data:"))
                if point["time"] >= connected:
                    delays.append(time.time() - point["time"])
            if time.time() > until:
                break
    return delays


async def hammer(session: aiohttp.ClientSession, path: str, params: dict, until: float) -> list[float]:
    """Back-to-back requests until ``until``; their latencies in seconds."""
    latencies = []
    while time.time() < until:
        start = time.perf_counter()
        async with session.get(path, params=params) as response:
            await response.read()
            response.raise_for_status()
        latencies.append(time.perf_counter() - start)
    return latencies


async def measure(url: str, token: str, run_id: str, num_clients: int, seconds: float) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=num_clients + 2)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:
        async with session.get(f"/v1/runs/{run_id}") as response:
            step = (await response.json())["step"]
        until = time.time() + seconds
        half = num_clients // 2
        tasks = [hammer(session, f"/v1/runs/{run_id}", {}, until) for _ in range(half)]
        since = {"since": max(0, step - 2)}
        tasks += [hammer(session, f"/v1/runs/{run_id}/metrics", since, until) for _ in range(num_clients - half)]
        results = await asyncio.gather(sse_delays(session, run_id, until), *tasks)
    delays, runs, metrics = results[0], results[1 : half + 1], results[half + 1 :]

    def percentiles(samples: list[list[float]], name: str) -> dict[str, float]:
        flat = np.asarray([s for part in samples for s in part]) * 1000
        return {f"{name}_p50_ms": round(float(np.percentile(flat, 50)), 1),
                f"{name}_p99_ms": round(float(np.percentile(flat, 99)), 1), f"{name}_requests": len(flat)}  # fmt: skip

    return {
        **percentiles(runs, "get_run"),
        **percentiles(metrics, "get_metrics"),
        "sse_delay_p50_s": round(float(np.median(delays)), 3),
        "sse_delay_max_s": round(max(delays), 3),
        "sse_events": len(delays),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench service", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--port", type=int, default=8391)
    parser.add_argument("--output", type=Path, default=Path("docs/results/service_cpu.json"))
    args = parser.parse_args(argv)
    env = cluster_env()
    token = secrets.token_urlsafe(16)
    url = f"http://127.0.0.1:{args.port}"
    start_head(env, "--port=6421", f"--dashboard-port={DASHBOARD}", "--include-dashboard=true")
    try:
        with tempfile.TemporaryDirectory() as state:
            service = start_service(Path(state), args.port, token)
            try:
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                    overrides = ["trainer.num_steps=100000", "tracking.wandb=disabled", "checkpoint.at_end=false"]
                    request = {"recipe_name": "grpo_tiny_random", "overrides": overrides}
                    run_id = client.post("/v1/runs", json=request).raise_for_status().json()["id"]
                    while client.get(f"/v1/runs/{run_id}").json()["step"] < 2:
                        time.sleep(0.5)
                    figures = asyncio.run(measure(url, token, run_id, args.clients, args.seconds))
                    client.post(f"/v1/runs/{run_id}/cancel")
            finally:
                service.kill()
    finally:
        subprocess.run([*RAY_CLI, "stop", "--force"], env=env, check=False, capture_output=True)
    figures = {"clients": args.clients, "seconds": args.seconds, **figures}
    targets_met = {
        "get_run_p99<100ms": figures["get_run_p99_ms"] < 100,
        "get_metrics_p99<100ms": figures["get_metrics_p99_ms"] < 100,
        "sse_delay_max<1s": figures["sse_delay_max_s"] < 1.0,
    }
    record_result("service", figures, targets_met, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
