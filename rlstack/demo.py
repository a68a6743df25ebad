"""``make demo``: the embedded GRPO recipe submitted to a local Ray head with ``ray job submit``.

Starts a Ray head and waits until its job agent takes submissions, submits the recipe and
streams its logs, stops Ray, and prints one last line ``{"summary": {...}}`` with held-out
accuracy before and after, steps, wall time, peak memory of the whole run and the run
directory.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rlstack import models
from rlstack.memory import PeakMemory
from rlstack.ray_head import DASHBOARD_PORT, RAY_CLI, cluster_env, start_head
from rlstack.train import LOCAL_OBJECT_STORE_BYTES


def run_demo(recipe: str, overrides: list[str], run_root: Path, setup_s: float) -> dict:
    start = time.perf_counter()
    models.resolve("smollm2")  # first use provisions the cache; counted as setup
    setup_s += time.perf_counter() - start
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_root.resolve() / name
    env = cluster_env()
    with PeakMemory() as memory:
        begin = time.perf_counter()
        try:
            start_head(
                env, f"--num-cpus={os.cpu_count()}", f"--object-store-memory={LOCAL_OBJECT_STORE_BYTES}",
                "--include-dashboard=true", f"--dashboard-port={DASHBOARD_PORT}",
            )  # fmt: skip
            job = subprocess.run(
                [*RAY_CLI, "job", "submit", f"--address=http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir", ".",
                 "--", "python", "-m", "rlstack.train", recipe, f"tracking.run_root={run_root.resolve()}",
                 f"tracking.name={name}", *overrides],
                env=env,
            )  # fmt: skip
        finally:
            subprocess.run([*RAY_CLI, "stop", "--force"], env=env, check=False)
        wall_s = time.perf_counter() - begin
    if job.returncode != 0:
        raise SystemExit(f"rlstack demo: the training job failed with exit code {job.returncode}")
    result = json.loads((run_dir / "summary.json").read_text())
    return {
        **result,
        "wall_s": round(wall_s, 1),
        "train_wall_s": result["wall_s"],
        "setup_s": round(setup_s, 1),
        "peak_memory_gib": round(memory.peak_gib, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack demo", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/grpo_arith_smollm2.yaml")
    parser.add_argument("--run-root", default="runs", type=Path)
    parser.add_argument("--setup-seconds", type=float, default=0.0, help="time already spent on setup (venv)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    summary = run_demo(args.recipe, args.overrides, args.run_root, args.setup_seconds)
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
