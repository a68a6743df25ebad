"""``make demo``: the embedded GRPO recipe submitted to a local Ray head with ``ray job submit``.

Starts a Ray head and waits until its job agent takes submissions, submits the recipe and
streams its logs, stops Ray, and prints one last line ``{"summary": {...}}`` with held-out
accuracy before and after, steps, wall time, peak memory of the whole run (and of each kind
of process at that peak) and the run directory. By default Ray's own output goes to
``<run_dir>/logs/ray.log`` and the console shows the job's lines; ``--verbose`` shows everything.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

import psutil

from rlstack import models
from rlstack.api.jobs import EXCLUDES
from rlstack.logs import logs_dir
from rlstack.memory import PeakSampler
from rlstack.ray_head import RAY_CLI, cluster_env, free_port, start_head
from rlstack.train import LOCAL_OBJECT_STORE_BYTES

MARK_ENV = "RLSTACK_DEMO_RUN"
"""Set to the run's name in the environment of everything the demo starts, which Ray's processes inherit."""
RAY_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s(INFO|SUCC|DEBUG)\s")
"""Ray's own informational lines (``ray job submit`` and the job's start), as Ray formats them."""
JOB_START = "Running entrypoint for job"
STILL_RUNNING = re.compile(r"Status for job '[^']+': (RUNNING|PENDING)")
"""What ``ray job logs --follow`` ends with when its stream closed before the job did, which Ray's log stream may."""
SUCCEEDED = re.compile(r"Job '[^']+' succeeded")
JOB_EXCLUDES = [*EXCLUDES, "/.?*"]  # not "/.*", which matches the working directory itself, "."
"""What the job's working directory leaves behind: the run service's excludes and every dot-entry at the top (caches,
tool directories), which would otherwise push the upload past Ray's 100 MiB."""


class DemoMemory(PeakSampler):
    """The summed PSS of every process whose environment carries ``MARK_ENV=mark``, and of their descendants: all
    the demo starts (the Ray head's processes, the job's driver and actors), and nothing another user runs meanwhile.
    (Descendants too: a process that sets its title, as Ray's dashboard modules do, may overwrite its environment.)
    ``parts`` holds the peak's share of each kind of process (``role``).

    PSS (proportional set size) splits shared pages between the processes that map them, so Ray's shared
    object store and shared libraries are counted once.
    """

    def __init__(self, mark: str, interval_s: float = 2.0):
        super().__init__(interval_s)
        self.mark = mark
        self.parts: Counter[str] = Counter()

    def sample(self) -> int:
        parents, marked = {}, set()
        for proc in psutil.process_iter():
            try:
                parents[proc.pid] = proc.ppid()
                if proc.environ().get(MARK_ENV) == self.mark:
                    marked.add(proc.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        parts: Counter[str] = Counter()
        for pid in with_descendants(marked, parents):
            try:
                proc = psutil.Process(pid)
                parts[role(proc.cmdline())] += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        total = sum(parts.values())
        if total > self.peak_bytes:
            self.parts = parts
        return total

    def parts_gib(self) -> dict[str, float]:
        return {name: round(size / 2**30, 2) for name, size in self.parts.most_common()}


def with_descendants(marked: set[int], parents: dict[int, int]) -> set[int]:
    """The processes ``marked`` and every process below one of them, given each process's parent."""
    found = set()
    for pid in parents:
        ancestor = pid
        while ancestor not in marked and ancestor in parents and parents[ancestor] != ancestor:
            ancestor = parents[ancestor]
        if ancestor in marked:
            found.add(pid)
    return found


ROLES = [
    ("job submit", "ray job submit"), ("ray.scripts.scripts", "ray cli"), ("rlstack.api.jobs", "ray cli"),
    ("rlstack.train", "driver"), ("gcs_server", "gcs_server"), ("raylet", "raylet"), ("ray-dashboard", "dashboard"),
    ("dashboard.py", "dashboard"), ("log_monitor", "log_monitor"), ("monitor.py", "autoscaler monitor"),
    ("ray.util.client.server", "ray client server"), ("default_worker.py", "ray::IDLE"), ("wandb", "wandb"),
]  # fmt: skip
"""A substring of a command line, and the kind of process it names; the first that matches wins."""


def role(cmdline: list[str]) -> str:
    """What kind of process a command line is: ``ray::TrainerWorker`` for an actor, ``raylet``, ``driver``, ..."""
    command = " ".join(cmdline)
    if command.startswith("ray::"):
        return command.split()[0].split(".")[0]  # ray::TrainerWorker.step: the actor, not its current method
    return next((name for key, name in ROLES if key in command), Path(cmdline[0]).name if cmdline else "?")


def job_lines(stream: IO[str], log: IO[str] | None, skip: int) -> tuple[int, str]:
    """Copy ``ray job logs``' output to ``log`` and show the job's own lines after the first ``skip`` of them (those
    already shown); without a ``log``, show Ray's lines too. Returns how many of the job's lines there were, and
    the last line in which Ray says how the job stands."""
    count, status = 0, ""
    for line in stream:
        if STILL_RUNNING.search(line) or SUCCEEDED.search(line) or " failed" in line or "was stopped" in line:
            status = line
        ours = JOB_START not in line and not RAY_LINE.match(line)
        count += ours
        if log is not None:
            log.write(line)
        if (ours and count > skip) or (not ours and log is None):
            print(line, end="", flush=True)
    return count, status


def stop(mark: str, grace_s: float = 10.0) -> None:
    """Stop the demo's Ray head: its processes (``MARK_ENV=mark``) and theirs, not every Ray on the machine as
    ``ray stop`` would, which on a shared machine takes down other users' clusters too."""
    parents, marked = {}, set()
    for proc in psutil.process_iter():
        try:
            parents[proc.pid] = proc.ppid()
            if proc.environ().get(MARK_ENV) == mark and proc.pid != os.getpid():
                marked.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    processes = []
    for pid in with_descendants(marked, parents):
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            processes.append(process)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def submit(job: list[str], env: dict[str, str], log: IO[str] | None, address: str, job_id: str) -> int:
    """Submit the job (``job``: ``ray job submit --no-wait --submission-id=job_id ...``), then stream its lines
    until it ends; 0 if it succeeded, else 1.

    The stream is ``ray job logs --follow``, opened again (showing only lines not yet shown) when Ray closes it
    while the job still runs, as its log stream may on a loaded machine.
    """
    subprocess.run(job, env=env, check=True, stdout=log, stderr=log)
    follow = [*RAY_CLI, "job", "logs", "--follow", f"--address={address}", job_id]
    shown = 0
    while True:
        with subprocess.Popen(follow, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            assert process.stdout is not None
            shown, status = job_lines(process.stdout, log, shown)
        if not STILL_RUNNING.search(status):
            return 0 if SUCCEEDED.search(status) else 1
        time.sleep(1.0)


def seen_in(log: IO[str] | None) -> str:
    return f"; Ray's output is in {log.name}" if log is not None else ""


def run_demo(recipe: str, overrides: list[str], run_root: Path, setup_s: float, verbose: bool = False) -> dict:
    start = time.perf_counter()
    models.resolve("smollm2")  # first use provisions the cache; counted as setup
    setup_s += time.perf_counter() - start
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_root.resolve() / name
    logs_dir(run_dir).mkdir(parents=True)
    env = {**cluster_env(), MARK_ENV: name}
    log = None if verbose else (logs_dir(run_dir) / "ray.log").open("a")
    if log is not None:
        print(f"rlstack demo: a local Ray head runs {recipe} as a job; Ray's own output: {log.name}", flush=True)
    # ports of its own: Ray's defaults (6379, 8265, 52365, 10001) may be taken by another head on this machine
    gcs, dashboard, agent, client = (free_port() for _ in range(4))
    address = f"http://127.0.0.1:{dashboard}"
    job = [
        *RAY_CLI, "job", "submit", f"--address={address}", "--working-dir", ".",
        f"--runtime-env-json={json.dumps({'excludes': JOB_EXCLUDES})}", "--no-wait", f"--submission-id={name}",
        "--", "python", "-m", "rlstack.train", recipe,
        f"tracking.run_root={run_root.resolve()}", f"tracking.name={name}", *overrides,
        *(["--verbose"] if verbose else []),
    ]  # fmt: skip
    with DemoMemory(name) as memory:
        begin = time.perf_counter()
        try:
            start_head(
                env, f"--num-cpus={os.cpu_count()}", f"--object-store-memory={LOCAL_OBJECT_STORE_BYTES}",
                "--include-dashboard=true", f"--port={gcs}", f"--dashboard-port={dashboard}",
                f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}", "--disable-usage-stats",
                log=log,
            )  # fmt: skip
            returncode = submit(job, env, log, address, job_id=name)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"rlstack demo: the Ray head did not start (exit code {exc.returncode}){seen_in(log)}"
            ) from None
        finally:
            stop(name)
        wall_s = time.perf_counter() - begin
    if returncode != 0:
        raise SystemExit(f"rlstack demo: the training job failed with exit code {returncode}{seen_in(log)}")
    result = json.loads((run_dir / "summary.json").read_text())
    return {
        **result,
        "wall_s": round(wall_s, 1),
        "train_wall_s": result["wall_s"],
        "setup_s": round(setup_s, 1),
        "peak_memory_gib": round(memory.peak_gib, 2),
        "peak_memory_by_process_gib": memory.parts_gib(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack demo", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/grpo_arith_smollm2.yaml")
    parser.add_argument("--run-root", default="runs", type=Path)
    parser.add_argument("--setup-seconds", type=float, default=0.0, help="time already spent on setup (venv)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' logs too")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    summary = run_demo(args.recipe, args.overrides, args.run_root, args.setup_seconds, args.verbose)
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
