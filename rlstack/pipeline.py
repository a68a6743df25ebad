"""What joins the controller's loops: bounded queues, and the staleness bound on what they carry.

The GRPO controller runs two loops (``rlstack.controller``): ``continuous_rollouts`` turns requested steps into
scored groups, ``continuous_training`` turns scored groups into updates. A ``Channel`` carries work from one to
the other, at most ``capacity`` items at a time, and carries an error the same way: a loop that fails closes its
outgoing channel with the error, and the next loop's ``get`` raises it. Every wait has a deadline, so a loop
that stops answering fails the reader, named, instead of hanging it.
"""

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Closed(Exception):
    """The channel was closed without an error: its writer is done."""


class Channel(Generic[T]):
    """A bounded FIFO queue between two threads; ``put`` and ``get`` say how long they waited."""

    def __init__(self, name: str, capacity: int):
        """``name`` says what it carries in messages, e.g. ``scored groups``."""
        assert capacity >= 1, capacity
        self.name, self.capacity = name, capacity
        self.items: deque[T] = deque()
        self.num_put = 0
        """Items put since the channel was made."""
        self.error: BaseException | None = None
        self.closed = False
        self.changed = threading.Condition()

    def put(self, item: T) -> float:
        """Append ``item`` once there is room; returns the seconds waited. Raises ``Closed`` once closed."""
        start = time.perf_counter()
        with self.changed:
            self.changed.wait_for(lambda: self.closed or len(self.items) < self.capacity)
            if self.closed:
                raise Closed(self.name)
            self.items.append(item)
            self.num_put += 1
            self.changed.notify_all()
        return time.perf_counter() - start

    def get(self, timeout_s: float | None, waiting_for: str) -> tuple[T, float]:
        """The oldest item and the seconds waited for it. Raises the error the channel was closed with, ``Closed``
        when closed without one and empty, and ``TimeoutError`` naming ``waiting_for`` after ``timeout_s`` (``None``:
        no limit)."""
        start = time.perf_counter()
        with self.changed:
            if not self.changed.wait_for(lambda: self.items or self.closed, timeout=timeout_s):
                raise TimeoutError(f"{waiting_for}: no {self.name} arrived within {timeout_s:g} s")
            if self.error is not None:
                raise self.error
            if not self.items:
                raise Closed(self.name)
            item = self.items.popleft()
            self.changed.notify_all()
        return item, time.perf_counter() - start

    def wait_put(self, count: int, timeout_s: float, waiting_for: str) -> float:
        """Wait until ``count`` items were put in all (or the channel closed); returns the seconds waited."""
        start = time.perf_counter()
        with self.changed:
            if not self.changed.wait_for(lambda: self.num_put >= count or self.closed, timeout=timeout_s):
                raise TimeoutError(f"{waiting_for}: {self.name} {count} was not done within {timeout_s:g} s")
            if self.error is not None:
                raise self.error
        return time.perf_counter() - start

    def close(self, error: BaseException | None = None) -> None:
        """End the channel; waiting writers get ``Closed``, readers ``error`` (or, once empty, ``Closed``)."""
        with self.changed:
            self.closed = True
            self.error = self.error or error
            self.changed.notify_all()

    def snapshot(self) -> list[T]:
        """The items waiting, oldest first."""
        with self.changed:
            return list(self.items)


def staleness(trainer_version: int, versions: Sequence[int]) -> list[int]:
    """How many updates each sample lags the policy it would train: ``trainer_version - v`` for the version ``v``
    that generated it. On-policy samples have staleness 0."""
    return [trainer_version - v for v in versions]


def within_bound(trainer_version: int, versions: Sequence[int], max_staleness: int) -> list[bool]:
    """Which samples may train the update from ``trainer_version``: those at most ``max_staleness`` behind."""
    return [lag <= max_staleness for lag in staleness(trainer_version, versions)]
