"""``rlstack serve``: the HTTP run service, on a local Ray (started if none runs) or one given by address.

The service listens at once; until Ray's job agent takes submissions (``--ready-timeout``),
``/health`` answers ``starting`` with 503, as do the routes that need Ray, and the service
exits with code 1 if that takes longer. A submission that Ray refuses for now is retried
for ``--submit-timeout`` before the client gets 503 with ``Retry-After``.

The OpenAPI docs are at ``/docs``. Every route but ``/health`` needs the bearer token:
the one passed with ``--token`` (or ``RLSTACK_SERVICE_TOKEN``), else one generated on
first start and kept in ``--token-file`` with mode 0600; a token file that others may read, or
a token shorter than ``MIN_TOKEN_CHARS``, gets a warning, and an empty one is refused. Binding
to an address other than loopback needs an explicit token.
"""

import argparse
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
STATE_DIR = Path.home() / ".rlstack"
MIN_TOKEN_CHARS = 16
"""Shorter tokens get a warning: guessable."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stored_token(path: Path) -> str:
    """The token in ``path``, created with mode 0600 on first use; a warning if others may read the file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        warn(f"the token file {str(path)!r} has mode {mode:04o}, so others may read it: chmod 600 {path}")
    return path.read_text().strip()


def usable(token: str) -> bool:
    """False, with an error line, for an empty token (which every request would match); a warning for a short
    one."""
    if not token:
        print("rlstack serve: error: the bearer token is empty", file=sys.stderr)
        return False
    if len(token) < MIN_TOKEN_CHARS:
        warn(f"the bearer token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}")
    return True


def warn(line: str) -> None:
    print(f"rlstack serve: warning: {line}", file=sys.stderr, flush=True)


def dashboard_address(requested: str | None) -> str:
    """The requested Ray dashboard, or the local one, starting a Ray head that outlives the service if needed.

    A head started here is not waited for: the service waits for its job agent itself.
    """
    from ray.job_submission import JobSubmissionClient

    from rlstack.ray_head import cluster_env, launch_head
    from rlstack.train import LOCAL_OBJECT_STORE_BYTES

    if requested:
        return requested
    try:
        JobSubmissionClient(DEFAULT_DASHBOARD)
        return DEFAULT_DASHBOARD
    except (ConnectionError, RuntimeError):
        print("rlstack serve: no Ray at 127.0.0.1:8265; starting a local head (stop it with `ray stop`)", flush=True)
        launch_head(cluster_env(), "--include-dashboard=true", f"--object-store-memory={LOCAL_OBJECT_STORE_BYTES}")
        return DEFAULT_DASHBOARD


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ray-address", help=f"Ray dashboard URL (default: {DEFAULT_DASHBOARD}, started if absent)")
    parser.add_argument("--db", default=f"sqlite:///{STATE_DIR / 'service.db'}", help="SQLAlchemy URL of the store")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where launched runs write")
    parser.add_argument("--token", default=os.environ.get("RLSTACK_SERVICE_TOKEN"), help="the bearer token")
    parser.add_argument("--token-file", type=Path, default=STATE_DIR / "service_token")
    parser.add_argument("--public-url", help="how jobs reach the service (default: http://<host>:<port>)")
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait at start-up for Ray's job agent (120)"
    )
    parser.add_argument(
        "--submit-timeout", type=float, default=60.0, help="seconds to retry a submission Ray refuses for now (60)"
    )
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.token:
        print(f"rlstack serve: error: binding to {args.host} needs --token or RLSTACK_SERVICE_TOKEN", file=sys.stderr)
        return 2
    token = args.token or stored_token(args.token_file)
    if not usable(token):
        return 2
    if args.db.startswith("sqlite:///"):
        Path(args.db.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "token")

    import uvicorn

    from rlstack.api.app import Settings, create_app

    reachable = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
    settings = Settings(
        token=token,
        db_url=args.db,
        ray_address=dashboard_address(args.ray_address),
        runs_dir=args.runs_dir,
        public_url=args.public_url or f"http://{reachable}:{args.port}",
        ready_timeout_s=args.ready_timeout,
        submit_timeout_s=args.submit_timeout,
    )
    gave_up: list[Exception] = []

    def stop(exc: Exception) -> None:
        gave_up.append(exc)
        server.should_exit = True

    app = create_app(settings, on_ready_timeout=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    where = "the environment" if args.token else args.token_file
    print(f"rlstack serve: http://{args.host}:{args.port}/docs  (bearer token in {where})", flush=True)
    server.run()
    return 1 if gave_up else 0


if __name__ == "__main__":
    sys.exit(main())
