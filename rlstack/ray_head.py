"""A local Ray head for the demo, the run service, the benches and the tests: ``ray start --head`` and its environment.

``launch_head`` returns once ``ray start`` does; ``start_head`` also waits until the head's job
agent takes submissions (``rlstack.api.jobs.wait_for_job_agent``).
"""

import os
import subprocess
import sys
from pathlib import Path

DASHBOARD_PORT = 8265
"""Ray's default dashboard port: where ``start_head`` looks unless ``--dashboard-port=`` says otherwise."""
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
"""The ``ray`` command of this interpreter's Ray, whether or not the virtualenv is on ``PATH``."""
HEAD_READY_TIMEOUT_S = 120.0
"""How long ``start_head`` waits for the new head's job agent."""


def cluster_env() -> dict[str, str]:
    """Environment for ``ray start`` and ``ray job submit``.

    This interpreter's ``bin`` goes first on ``PATH``, so the job's ``python`` is the one
    with rlstack's dependencies even when the virtualenv is not activated (as under make).
    """
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "RAY_DISABLE_USAGE_STATS": "1", "RAY_AUTH_MODE": "token"}


def launch_head(env: dict[str, str], *args: str) -> None:
    """``ray start --head`` with token authentication; creates ``~/.ray/auth_token`` on a fresh machine.

    It returns before the head's job agent may take submissions; ``start_head`` waits for that too.
    """
    subprocess.run([*RAY_CLI, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    subprocess.run([*RAY_CLI, "start", "--head", *args], env=env, check=True)


def start_head(env: dict[str, str], *args: str) -> str:
    """``launch_head``, then wait until its job agent takes submissions; returns the dashboard's URL.

    The dashboard port is ``--dashboard-port=`` among ``args``, else Ray's default 8265.
    """
    launch_head(env, *args)
    port = next((a.removeprefix("--dashboard-port=") for a in args if a.startswith("--dashboard-port=")), None)
    address = f"http://127.0.0.1:{port or DASHBOARD_PORT}"
    # in a child with ``env``: Ray reads its authentication mode once per process
    subprocess.run([sys.executable, "-m", "rlstack.api.jobs", address, str(HEAD_READY_TIMEOUT_S)], env=env, check=True)
    return address
