"""The reward pool: actors that run the recipe's reward function with a per-call timeout."""

import logging
import math
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import ray

from reward.loader import load_reward

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreRequest:
    """One completion to score."""

    completion: str
    """The decoded response."""
    prompt: str
    """The user message it answers."""
    row: dict[str, Any]
    """The dataset row's fields, passed as keyword arguments."""


@dataclass(frozen=True)
class Scores:
    """Rewards for a list of requests, with the failures counted."""

    rewards: list[float]
    """One reward per request; a failed call scores 0."""
    num_errors: int
    """Calls that raised, timed out or returned a non-finite or non-number value."""
    first_error: str | None
    """The traceback or message of the first failure, for the log."""


class RewardWorker:
    """Calls the reward function in threads, so calls run concurrently and each can time out."""

    def __init__(self, function: str, timeout_s: float, num_threads: int = 8):
        self.fn = load_reward(function)
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers=num_threads)

    def score(self, requests: list[ScoreRequest]) -> Scores:
        futures = [self.pool.submit(self.fn, r.completion, prompt=r.prompt, **r.row) for r in requests]
        rewards, errors = [], []
        for future in futures:
            try:
                value = future.result(timeout=self.timeout_s)
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise TypeError(f"reward returned {value!r}; expected a finite float")
                rewards.append(float(value))
            except FutureTimeout:
                rewards.append(0.0)
                errors.append(f"reward call timed out after {self.timeout_s}s")
            except Exception:  # user code: any failure scores 0 and is counted
                rewards.append(0.0)
                errors.append(traceback.format_exc())
        return Scores(rewards, len(errors), errors[0] if errors else None)


class RewardPool:
    """K reward actors; requests are split evenly and scored concurrently."""

    def __init__(self, function: str, timeout_s: float, num_workers: int, num_cpus: float):
        actor = ray.remote(RewardWorker).options(num_cpus=num_cpus, max_restarts=3, max_task_retries=1)
        self.workers: list[Any] = [actor.remote(function, timeout_s) for _ in range(num_workers)]

    def score(self, requests: list[ScoreRequest]) -> Scores:
        chunk = -(-len(requests) // len(self.workers))
        parts = [requests[i : i + chunk] for i in range(0, len(requests), chunk)]
        results: list[Scores] = ray.get([w.score.remote(p) for w, p in zip(self.workers, parts, strict=False)])
        first = next((r.first_error for r in results if r.first_error), None)
        if first:
            logger.warning("reward failures this step; first one:\n%s", first)
        return Scores(
            rewards=[x for r in results for x in r.rewards],
            num_errors=sum(r.num_errors for r in results),
            first_error=first,
        )

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
