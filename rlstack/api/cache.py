"""Rendered response bodies per run, so that many clients polling one run cost one query per change."""

import threading
from collections.abc import Callable

MAX_BODIES_PER_RUN = 64


class ResponseCache:
    """Bodies keyed by run and request, dropped whenever the run changes.

    A body rendered while the run changed is not kept: each run has a version, read
    before rendering and checked before storing.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: dict[str, dict[str, bytes]] = {}
        self.versions: dict[str, int] = {}

    def get(self, run_id: str, key: str, render: Callable[[], bytes]) -> bytes:
        with self.lock:
            body = self.bodies.get(run_id, {}).get(key)
            version = self.versions.get(run_id, 0)
        if body is not None:
            return body
        body = render()
        with self.lock:
            if self.versions.get(run_id, 0) == version:
                bodies = self.bodies.setdefault(run_id, {})
                if len(bodies) >= MAX_BODIES_PER_RUN:
                    bodies.clear()
                bodies[key] = body
        return body

    def drop(self, run_id: str) -> None:
        """The run changed: forget its bodies."""
        with self.lock:
            self.bodies.pop(run_id, None)
            self.versions[run_id] = self.versions.get(run_id, 0) + 1
