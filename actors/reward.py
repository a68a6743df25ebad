"""The reward pool: actors that run the recipe's reward functions, isolated from the trainer.

A failed call — an exception, a timeout, NaN, a non-number, or the actor process dying —
scores ``reward.error_score`` and counts in ``reward/<name>/errors``; the first traceback
of each kind is logged. With ``reward.fail_fast`` the run stops instead.
"""

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.placement import node_id, require_resources
from reward.api import is_async, is_batched, optional_keywords, to_score
from reward.loader import instantiate, resolve
from rlstack.config import PlacementSection, RewardFunction, RewardSection
from rlstack.data.split import chunks
from rlstack.logs import capture_output

logger = logging.getLogger(__name__)

MAX_THREADS = 64
POLL_S = 0.02
RESTART_POLL_S = 0.2
RESTART_TIMEOUT_S = 120.0
"""How long the pool waits for Ray to start a dead or killed reward actor again: a new process importing the
reward modules, which takes longer than a stalled call is given (``reward.actor_timeout_s``)."""


class RewardError(RuntimeError):
    """A reward call failed and the recipe asked to stop (``reward.fail_fast``)."""


@dataclass(frozen=True)
class ScoreRequest:
    """One completion to score."""

    completion: str
    """The decoded response."""
    prompt: str
    """The user message it answers."""
    row: dict[str, Any]
    """The dataset row's fields, passed as keyword arguments."""
    completion_tokens: int = 0
    """Response length in tokens; passed to functions that name ``completion_tokens``."""
    finish_reason: str = "stop"
    """``stop`` or ``length``; passed to functions that name ``finish_reason``."""


@dataclass
class RewardResult:
    """One reward function's scores for a list of requests."""

    scores: list[float]
    """One score per request; failures score ``error_score``."""
    extras: dict[str, list[float]] = field(default_factory=dict)
    """Numeric extras returned in dicts, by key, in the order the calls finished."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failures by kind: ``exception``, ``timeout``, ``bad_value``, ``actor_died``."""
    first_errors: dict[str, str] = field(default_factory=dict)
    """The first traceback or message of each kind."""

    def fail(self, index: int, kind: str, message: str, error_score: float) -> None:
        self.scores[index] = error_score
        self.errors[kind] += 1
        self.first_errors.setdefault(kind, message)

    def fail_all(self, kind: str, message: str, error_score: float) -> None:
        for index in range(len(self.scores)):
            self.fail(index, kind, message, error_score)

    def merge_at(self, start: int, part: "RewardResult") -> None:
        """Take ``part``'s results for the requests ``start, start + 1, ...``."""
        self.scores[start : start + len(part.scores)] = part.scores
        for key, values in part.extras.items():
            self.extras.setdefault(key, []).extend(values)
        self.errors.update(part.errors)
        for kind, message in part.first_errors.items():
            self.first_errors.setdefault(kind, message)


class DaemonThreadPool:
    """Threads that never block interpreter exit, so a reward stuck forever cannot hang a shutdown.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit; a call that
    never returns would keep the process alive. A stuck thread is replaced with
    ``add_thread`` so the pool keeps its capacity.
    """

    def __init__(self, num_threads: int):
        self.tasks: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple, dict]] = queue.SimpleQueue()
        for _ in range(num_threads):
            self.add_thread()

    def add_thread(self) -> None:
        threading.Thread(target=self._work, daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.tasks.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self.tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # delivered to the caller through the future
                future.set_exception(exc)


class RewardWorker:
    """Hosts reward functions; per-sample functions run in threads so calls overlap and can time out."""

    def __init__(self, functions: list[RewardFunction], timeout_s: float, error_score: float):
        capture_output("reward")
        self.rewards = [(f.metric_name, instantiate(resolve(f.fn, "reward.functions"), f.kwargs)) for f in functions]
        self.keywords = {name: optional_keywords(fn) for name, fn in self.rewards}  # inspected once, not per call
        self.timeout_s = timeout_s
        self.error_score = error_score
        self.pool = DaemonThreadPool(MAX_THREADS)

    def node_id(self) -> str:
        return node_id()

    def score(self, requests: list[ScoreRequest]) -> dict[str, RewardResult]:
        return {name: self._score_one(name, fn, requests) for name, fn in self.rewards}

    def _score_one(self, name: str, fn: Callable[..., Any], requests: list[ScoreRequest]) -> RewardResult:
        result = RewardResult(scores=[self.error_score] * len(requests))
        if is_batched(fn):
            self._run_batched(fn, requests, result)
            return result
        calls = [(request.completion, self._keywords(name, request)) for request in requests]
        if is_async(fn):
            self._run_async(fn, calls, result)
        else:
            self._run_threads(fn, calls, result)
        return result

    def _keywords(self, name: str, request: ScoreRequest) -> dict[str, Any]:
        extra = {keyword: getattr(request, keyword) for keyword in self.keywords[name]}
        return {"prompt": request.prompt, **request.row, **extra}

    def _record(self, result: RewardResult, index: int, value: Any) -> None:
        try:
            score, extras = to_score(value)
        except (TypeError, ValueError) as exc:
            result.fail(index, "bad_value", str(exc), self.error_score)
            return
        result.scores[index] = score
        for key, number in extras.items():
            result.extras.setdefault(key, []).append(number)

    def _run_threads(self, fn: Callable[..., Any], calls: list[tuple[str, dict]], result: RewardResult) -> None:
        """Each call times out ``timeout_s`` after it started; a stuck thread is abandoned."""
        started: dict[int, float] = {}

        def call(index: int, completion: str, keywords: dict[str, Any]) -> Any:
            started[index] = time.monotonic()
            return fn(completion, **keywords)

        futures: dict[Future[Any], int] = {self.pool.submit(call, i, *c): i for i, c in enumerate(calls)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                error = future.exception()
                if error is None:
                    self._record(result, index, future.result())
                else:
                    message = "".join(traceback.format_exception(error))
                    result.fail(index, "exception", message, self.error_score)
            now = time.monotonic()
            for future in [f for f in pending if now - started.get(futures[f], now) > self.timeout_s]:
                pending.discard(future)
                self.pool.add_thread()  # the abandoned call keeps its thread
                result.fail(futures[future], "timeout", f"call timed out after {self.timeout_s}s", self.error_score)

    def _run_async(self, fn: Callable[..., Any], calls: list[tuple[str, dict]], result: RewardResult) -> None:
        async def gather() -> list[Any]:
            waits = [
                asyncio.wait_for(fn(completion, **keywords), timeout=self.timeout_s) for completion, keywords in calls
            ]
            return await asyncio.gather(*waits, return_exceptions=True)

        for index, value in enumerate(asyncio.run(gather())):
            if isinstance(value, TimeoutError):
                result.fail(index, "timeout", f"call timed out after {self.timeout_s}s", self.error_score)
            elif isinstance(value, BaseException):
                result.fail(index, "exception", "".join(traceback.format_exception(value)), self.error_score)
            else:
                self._record(result, index, value)

    def _run_batched(self, fn: Callable[..., Any], requests: list[ScoreRequest], result: RewardResult) -> None:
        """One call for all requests, with one timeout; a failure fails every sample of the call."""
        future = self.pool.submit(
            fn,
            [r.completion for r in requests],
            prompts=[r.prompt for r in requests],
            rows=[r.row for r in requests],
        )
        done, _ = wait([future], timeout=self.timeout_s)
        if not done:
            self.pool.add_thread()
            result.fail_all("timeout", f"batched call timed out after {self.timeout_s}s", self.error_score)
            return
        if future.exception() is not None:
            message = "".join(traceback.format_exception(future.exception()))  # type: ignore[arg-type]
            result.fail_all("exception", message, self.error_score)
            return
        values = future.result()
        if not isinstance(values, list) or len(values) != len(requests):
            message = f"batched reward returned {type(values).__name__}; expected a list of {len(requests)} scores"
            result.fail_all("bad_value", message, self.error_score)
            return
        for index, value in enumerate(values):
            self._record(result, index, value)


@dataclass(frozen=True)
class Scores:
    """The pool's answer for one list of requests."""

    rewards: list[float]
    """Weighted sum of all reward functions, per request."""
    by_function: dict[str, list[float]]
    """Each function's own scores, by metric name."""
    metrics: dict[str, float]
    """``reward/<name>/mean``, ``reward/<name>/errors`` and the means of returned extras."""
    num_errors: int
    """Failed calls, all functions together."""


class RewardPool:
    """K shared reward actors, plus one actor per ``dedicated`` function.

    Requests are split evenly over a group's actors and scored concurrently. Actors are
    restarted by Ray if their process dies; the requests they held score as errors.
    """

    def __init__(self, section: RewardSection, placement: PlacementSection):
        self.section = section
        self.weights = {f.metric_name: f.weight for f in section.functions}
        self.order = [f.metric_name for f in section.functions]
        self.logged: set[tuple[str, str]] = set()
        self.restarting: list[Any] = []  # workers whose last call failed with their process
        actor = ray.remote(RewardWorker)
        shared = [f for f in section.functions if not f.dedicated]
        self.groups: list[tuple[list[str], list[Any]]] = []
        count = (placement.num_reward_workers if shared else 0) + sum(f.dedicated for f in section.functions)
        require_resources("reward_resources", placement.reward_resources, count)
        if shared:
            options = actor.options(
                num_cpus=placement.reward_cpus,
                resources=placement.reward_resources,
                max_restarts=-1,
                max_task_retries=0,
            )
            workers = [
                options.remote(shared, section.timeout_s, section.error_score)
                for _ in range(placement.num_reward_workers)
            ]
            self.groups.append(([f.metric_name for f in shared], workers))
        for f in section.functions:
            if f.dedicated:
                options = actor.options(
                    num_cpus=f.num_cpus,
                    num_gpus=f.num_gpus,
                    resources=placement.reward_resources,
                    max_restarts=-1,
                    max_task_retries=0,
                )
                self.groups.append(([f.metric_name], [options.remote([f], section.timeout_s, section.error_score)]))

    def score(self, requests: list[ScoreRequest]) -> Scores:
        self._await_restarts()
        calls = []
        for names, workers in self.groups:
            start = 0
            for worker, chunk in zip(workers, chunks(requests, len(workers)), strict=False):
                calls.append((names, worker, start, start + len(chunk), worker.score.remote(chunk)))
                start += len(chunk)
        results = {name: RewardResult(scores=[self.section.error_score] * len(requests)) for name in self.order}
        for names, worker, start, stop, ref in calls:
            part = self._get(worker, ref, names, min(stop, len(requests)) - start)
            for name, sub in part.items():
                results[name].merge_at(start, sub)
        return self._summarize(results, len(requests))

    @property
    def deadline_s(self) -> float:
        """How long the pool waits on a worker (``reward.actor_timeout_s``); worker-side timeouts fire first."""
        return self.section.actor_timeout_s or self.section.timeout_s * 2 + 60

    def _await_restarts(self) -> None:
        """Wait until the workers whose process died (and that Ray restarts) answer again, so that new
        requests do not reach an actor that is still restarting. Ray answers a call to a restarting
        actor at once with ``ActorUnavailableError``, or with ``RayActorError`` while it learns that the old
        process is gone (a stalled actor the pool just killed), so the pool asks again until the deadline."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        for worker in self.restarting:
            while time.monotonic() < deadline:
                try:
                    ray.get(worker.node_id.remote(), timeout=deadline - time.monotonic())
                    break
                except ray.exceptions.RayActorError:  # ActorUnavailableError included
                    time.sleep(RESTART_POLL_S)
                except ray.exceptions.GetTimeoutError:
                    break  # still down: its requests fail as actor_died
        self.restarting.clear()

    def _get(self, worker: Any, ref: ray.ObjectRef, names: list[str], size: int) -> dict[str, RewardResult]:
        """A worker's results; a dead or hung worker's requests all fail with ``actor_died``."""
        try:
            return ray.get(ref, timeout=self.deadline_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            self.restarting.append(worker)
            if isinstance(exc, ray.exceptions.GetTimeoutError):
                ray.kill(worker, no_restart=False)
            failed = {name: RewardResult(scores=[self.section.error_score] * size) for name in names}
            for result in failed.values():
                result.fail_all("actor_died", f"reward actor failed: {exc}", self.section.error_score)
            return failed

    def _summarize(self, results: dict[str, RewardResult], size: int) -> Scores:
        metrics: dict[str, float] = {}
        total = [0.0] * size
        num_errors = 0
        for name in self.order:
            result = results[name]
            total = [t + self.weights[name] * s for t, s in zip(total, result.scores, strict=True)]
            metrics[f"reward/{name}/mean"] = sum(result.scores) / max(size, 1)
            metrics[f"reward/{name}/errors"] = sum(result.errors.values())
            for key, values in result.extras.items():
                metrics[f"reward/{name}/{key}"] = sum(values) / len(values)
            num_errors += sum(result.errors.values())
            for kind, message in result.first_errors.items():
                if self.section.fail_fast:
                    raise RewardError(f"reward {name!r} failed ({kind}) and reward.fail_fast is set:\n{message}")
                if (name, kind) not in self.logged:
                    self.logged.add((name, kind))
                    logger.warning("reward %r: first failure of kind %r:\n%s", name, kind, message)
        return Scores(total, {n: results[n].scores for n in self.order}, metrics, num_errors)

    def nodes(self) -> list[str]:
        """The node of each reward actor."""
        return ray.get([w.node_id.remote() for _, workers in self.groups for w in workers])

    def shutdown(self) -> None:
        for _, workers in self.groups:
            for worker in workers:
                ray.kill(worker, no_restart=True)
