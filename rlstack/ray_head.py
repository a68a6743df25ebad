"""A local Ray head for the demo, the run service, the benches and the tests: ``ray start --head`` and its environment.

``launch_head`` returns once ``ray start`` does; ``start_head`` also waits until the head's job
agent takes submissions (``rlstack.api.jobs.wait_for_job_agent``).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

DASHBOARD_PORT = 8265
"""Ray's default dashboard port: where ``start_head`` looks unless ``--dashboard-port=`` says otherwise."""
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
"""The ``ray`` command of this interpreter's Ray, whether or not the virtualenv is on ``PATH``."""
HEAD_READY_TIMEOUT_S = 120.0
"""How long ``start_head`` waits for the new head's job agent."""
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
"""glibc's allocator for every process of the head (the actors inherit it): blocks of 1 MiB and more, most tensors,
are mapped on their own and given back to the system when freed. By default glibc raises that threshold as
blocks are freed, then serves later tensors from a heap that it cannot shrink past a live block, so a trainer's
heap only grows from step to step."""


def free_port() -> int:
    """A TCP port nothing listens on now, for a head that must not collide with another on a shared machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_env() -> dict[str, str]:
    """Environment for ``ray start`` and ``ray job submit``, with ``ALLOCATOR_ENV``.

    This interpreter's ``bin`` goes first on ``PATH``, so the job's ``python`` is the one
    with rlstack's dependencies even when the virtualenv is not activated (as under make).
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **ALLOCATOR_ENV, "PATH": path, "RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token"}


def launch_head(env: dict[str, str], *args: str, log: IO[str] | None = None) -> None:
    """``ray start --head`` with token authentication; creates ``~/.ray/auth_token`` on a fresh machine.

    It returns before the head's job agent may take submissions; ``start_head`` waits for that too.
    ``ray start``'s output goes to ``log`` when given, else to this process's.
    """
    subprocess.run([*RAY_CLI, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    subprocess.run([*RAY_CLI, "start", "--head", *args], env=env, check=True, stdout=log, stderr=log)


def start_head(env: dict[str, str], *args: str, log: IO[str] | None = None) -> str:
    """``launch_head``, then wait until its job agent takes submissions; returns the dashboard's URL.

    The dashboard port is ``--dashboard-port=`` among ``args``, else Ray's default 8265.
    """
    launch_head(env, *args, log=log)
    port = next((a.removeprefix("--dashboard-port=") for a in args if a.startswith("--dashboard-port=")), None)
    address = f"http://127.0.0.1:{port or DASHBOARD_PORT}"
    # in a child with ``env``: Ray reads its authentication mode once per process
    subprocess.run([sys.executable, "-m", "rlstack.api.jobs", address, str(HEAD_READY_TIMEOUT_S)], env=env, check=True,
                   stdout=log, stderr=log)  # fmt: skip
    return address
