"""Sends a run's metrics to the run service that launched it.

The service sets ``RLSTACK_API_URL``, ``RLSTACK_API_TOKEN`` and ``RLSTACK_RUN_ID`` in the
job's environment. Records go out from a background thread, batched, so training never
waits on the network; a record that cannot be delivered is still in ``metrics.jsonl``,
which the service reads when the run ends.
"""

import os
import queue
import threading
import time
from typing import Any

import httpx

ENV_URL, ENV_TOKEN, ENV_RUN = "RLSTACK_API_URL", "RLSTACK_API_TOKEN", "RLSTACK_RUN_ID"
RETRIES = 5
BATCH = 100


class Reporter:
    """Posts ``(seq, record)`` pairs to ``POST /v1/runs/{run_id}/report``."""

    def __init__(self, url: str, token: str, run_id: str, timeout_s: float = 5.0):
        self.endpoint = f"{url.rstrip('/')}/v1/runs/{run_id}/report"
        self.client = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
        self.pending: queue.Queue[tuple[int, dict[str, Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._deliver, name="rlstack-reporter", daemon=True)
        self.thread.start()

    @classmethod
    def from_env(cls) -> "Reporter | None":
        """A reporter when the run was launched by the service, else ``None``."""
        if all(os.environ.get(name) for name in (ENV_URL, ENV_TOKEN, ENV_RUN)):
            return cls(os.environ[ENV_URL], os.environ[ENV_TOKEN], os.environ[ENV_RUN])
        return None

    def send(self, seq: int, record: dict[str, Any]) -> None:
        self.pending.put((seq, record))

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (waiting at most ``timeout_s``), then stop."""
        self.pending.put(None)
        self.thread.join(timeout_s)
        self.client.close()

    def _deliver(self) -> None:
        done = False
        while not done:
            batch = [self.pending.get()]
            while len(batch) < BATCH and not self.pending.empty():
                batch.append(self.pending.get())
            done = batch[-1] is None
            records = [item for item in batch if item is not None]
            if records:
                self._post(records)

    def _post(self, records: list[tuple[int, dict[str, Any]]]) -> None:
        for attempt in range(RETRIES):
            try:
                self.client.post(self.endpoint, json={"records": records}).raise_for_status()
                return
            except httpx.HTTPError as exc:
                if attempt == RETRIES - 1:
                    print(f"rlstack: could not report {len(records)} metric records to the service: {exc}", flush=True)
                time.sleep(0.5 * 2**attempt)
