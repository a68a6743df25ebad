"""``rlstack runs submit|list|show|logs|cancel``: the command-line client of the run service.

The service is ``--url`` (or ``RLSTACK_URL``, default ``http://127.0.0.1:8000``); the token
is ``--token`` (or ``RLSTACK_SERVICE_TOKEN``), else the file ``rlstack serve`` wrote.
``submit`` waits out a 503 with ``Retry-After`` (a service still starting, or a Ray that
refuses for now) for up to ``--retry-for`` seconds.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from rlstack.api.serve import STATE_DIR

SUBMIT_READ_TIMEOUT_S = 120.0
"""Above the service's default ``--submit-timeout`` (60 s), for which it may hold a submission."""


def client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("RLSTACK_SERVICE_TOKEN")
    if not token:
        token_file = STATE_DIR / "service_token"
        token = token_file.read_text().strip() if token_file.exists() else ""
    return httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def submit(
    http: httpx.Client,
    args: argparse.Namespace,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> httpx.Response:
    """A recipe file is sent as JSON; a bare name is a shipped recipe.

    A 503 with ``Retry-After`` is tried again after that many seconds, while that stays
    within ``args.retry_for`` seconds of the first try.
    """
    if Path(args.recipe).is_file():
        body = {"recipe": yaml.safe_load(Path(args.recipe).read_text()), "overrides": args.overrides}
    else:
        body = {"recipe_name": args.recipe, "overrides": args.overrides}
    deadline = clock() + args.retry_for
    while True:
        response = http.post("/v1/runs", json=body, timeout=httpx.Timeout(30, read=SUBMIT_READ_TIMEOUT_S))
        retry_after = response.headers.get("Retry-After")
        if response.status_code != 503 or retry_after is None or clock() + int(retry_after) > deadline:
            return response
        detail = response.json().get("detail", response.text)
        print(f"rlstack runs: {detail}; trying again in {retry_after} s", file=sys.stderr, flush=True)
        sleep(int(retry_after))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack runs", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("RLSTACK_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token")
    commands = parser.add_subparsers(dest="command", required=True)
    submitting = commands.add_parser("submit", help="start a run from a recipe file or a shipped recipe's name")
    submitting.add_argument("recipe")
    submitting.add_argument("overrides", nargs="*")
    submitting.add_argument(
        "--retry-for", type=float, default=180.0, help="seconds to keep trying while the service answers 503 (180)"
    )
    listing = commands.add_parser("list", help="runs, newest first")
    listing.add_argument("--status", choices=["pending", "running", "succeeded", "failed", "stopped"])
    listing.add_argument("--limit", type=int, default=50)
    for name, text in [("show", "one run as JSON"), ("cancel", "stop a run"), ("logs", "a run's Ray job logs")]:
        command = commands.add_parser(name, help=text)
        command.add_argument("run_id")
        if name == "logs":
            command.add_argument("--follow", "-f", action="store_true")
    args = parser.parse_args(argv)
    with client(args) as http:
        try:
            if args.command == "submit":
                response = submit(http, args)
            elif args.command == "list":
                response = http.get(
                    "/v1/runs", params={"limit": args.limit, **({"status": args.status} if args.status else {})}
                )
            elif args.command == "show":
                response = http.get(f"/v1/runs/{args.run_id}")
            elif args.command == "cancel":
                response = http.post(f"/v1/runs/{args.run_id}/cancel")
            else:
                with http.stream(
                    "GET", f"/v1/runs/{args.run_id}/logs", params={"follow": args.follow}, timeout=None
                ) as response:
                    if response.is_success:
                        for chunk in response.iter_text():
                            print(chunk, end="", flush=True)
                        return 0
                    response.read()
        except httpx.TransportError as exc:
            print(f"rlstack runs: error: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
    if not response.is_success:
        print(f"rlstack runs: error: {response.status_code} {response.text}", file=sys.stderr)
        return 2 if response.status_code in (401, 404, 413, 422) else 1
    body = response.json()
    if args.command == "list":
        for run in body["runs"]:
            print(f"{run['id']}  {run['status']:<9}  step {run['step']:>4}  {run['name']}")
    else:
        print(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
