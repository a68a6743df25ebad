"""The environment pool: actors that host the recipe's environment (``rollout.environment``), one instance per
trajectory, isolated from the controller as the reward pool is.

A failed call — an exception, a call past ``rollout.environment.timeout_s``, a wrong return
value, or the actor's process dying — comes back as an ``Outcome`` with its kind of error,
which ends that trajectory (``rollout.multi_turn``). Ray restarts a dead actor; the
trajectories it held have failed, and the next call waits until it answers again.
"""

import asyncio
import inspect
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import ray

from actors.placement import node_id
from actors.reward import RESTART_POLL_S, DaemonThreadPool, Scores
from reward.loader import resolve
from rlstack.config import EnvironmentSection
from rlstack.environment import Outcome, check_class, check_messages, check_step
from rlstack.logs import capture_output
from rollout.multi_turn import Trajectory, trajectory_metrics

MAX_THREADS = 64
POLL_S = 0.02
KEY = "rollout.environment.fn"


class EnvironmentWorker:
    """Hosts environment instances by trajectory key; plain methods run in threads, ``async def`` ones on one
    event loop of the actor's, so each call can time out without blocking the others."""

    def __init__(self, section: EnvironmentSection):
        capture_output("environment")
        self.cls = resolve(section.fn, KEY)
        check_class(self.cls, KEY)
        self.kwargs = section.kwargs
        self.timeout_s = section.timeout_s
        self.instances: dict[int, Any] = {}
        self.pool = DaemonThreadPool(MAX_THREADS)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def node_id(self) -> str:
        return node_id()

    def reset(self, keys: list[int], rows: list[dict[str, Any]]) -> list[Outcome]:
        """A new instance per key, and its opening messages."""

        def call(key: int, row: dict[str, Any]) -> Any:
            self.instances[key] = instance = self.cls(**self.kwargs)
            return instance.reset, (row,)

        return self._run([(key, call, (key, row)) for key, row in zip(keys, rows, strict=True)], "reset")

    def step(self, keys: list[int], messages: list[list[dict[str, str]]], completions: list[str]) -> list[Outcome]:
        """Each key's instance answers its model turn."""

        def call(key: int, chat: list[dict[str, str]], completion: str) -> Any:
            return self.instances[key].step, (chat, completion)

        calls = [(key, call, (key, m, c)) for key, m, c in zip(keys, messages, completions, strict=True)]
        return self._run(calls, "step")

    def close(self, keys: list[int]) -> None:
        """Forget the instances of finished trajectories."""
        for key in keys:
            self.instances.pop(key, None)

    def _run(self, calls: list[tuple[int, Callable[..., Any], tuple]], method: str) -> list[Outcome]:
        """Run each ``(key, bind, args)``: ``bind(*args)`` gives the method and its arguments; every call times out
        ``timeout_s`` after it started and a stuck thread is left behind."""
        started: dict[int, float] = {}

        def start(index: int, bind: Callable[..., Any], args: tuple) -> Any:
            started[index] = time.monotonic()
            fn, fn_args = bind(*args)
            if inspect.iscoroutinefunction(fn):
                return asyncio.run_coroutine_threadsafe(fn(*fn_args), self.loop).result(self.timeout_s)
            return fn(*fn_args)

        futures: dict[Future[Any], int] = {self.pool.submit(start, i, b, a): i for i, (_, b, a) in enumerate(calls)}
        outcomes: list[Outcome] = [Outcome()] * len(calls)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                outcomes[futures[future]] = self._outcome(future, method)
            now = time.monotonic()
            for future in [f for f in pending if now - started.get(futures[f], now) > self.timeout_s]:
                pending.discard(future)
                self.pool.add_thread()
                outcomes[futures[future]] = timed_out(method, self.timeout_s)
        return outcomes

    def _outcome(self, future: Future[Any], method: str) -> Outcome:
        error = future.exception()
        if isinstance(error, TimeoutError):  # an async call's own deadline
            return timed_out(method, self.timeout_s)
        if error is not None:
            return Outcome(error="exception", message="".join(traceback.format_exception(error)))
        try:
            value = check_messages(future.result(), "reset") if method == "reset" else check_step(future.result())
        except TypeError as exc:
            return Outcome(error="bad_value", message=f"{self.cls.__qualname__}.{method}: {exc}")
        return Outcome(value=value)


def timed_out(method: str, timeout_s: float) -> Outcome:
    return Outcome(error="timeout", message=f"{method} timed out after {timeout_s:g} s (rollout.environment.timeout_s)")


class EnvironmentPool:
    """``rollout.environment.num_workers`` environment actors; trajectory ``key`` lives on actor
    ``key % num_workers`` from its reset to its close."""

    def __init__(self, section: EnvironmentSection):
        self.section = section
        options = ray.remote(EnvironmentWorker).options(num_cpus=section.num_cpus, max_restarts=-1, max_task_retries=0)
        self.workers: list[Any] = [options.remote(section) for _ in range(section.num_workers)]
        self.restarting: set[int] = set()

    @property
    def deadline_s(self) -> float:
        """How long the pool waits on an actor; each call's own timeout fires long before this."""
        return self.section.timeout_s * 2 + 60

    def reset(self, keys: list[int], rows: list[dict[str, Any]]) -> list[Outcome]:
        return self._call("reset", keys, rows)

    def step(self, keys: list[int], messages: list[list[dict[str, str]]], completions: list[str]) -> list[Outcome]:
        return self._call("step", keys, messages, completions)

    def close(self, keys: list[int]) -> None:
        parts = self._split(keys, [keys])
        refs = [self.workers[w].close.remote(args[0]) for w, (_, args) in parts.items()]
        ray.wait(refs, num_returns=len(refs), timeout=self.deadline_s)

    def _split(self, keys: list[int], columns: list[list[Any]]) -> dict[int, tuple[list[int], list[list[Any]]]]:
        """``{worker: (positions in keys, its share of each column)}``."""
        parts: dict[int, tuple[list[int], list[list[Any]]]] = {}
        for position, key in enumerate(keys):
            positions, shares = parts.setdefault(key % len(self.workers), ([], [[] for _ in columns]))
            positions.append(position)
            for share, column in zip(shares, columns, strict=True):
                share.append(column[position])
        return parts

    def _call(self, method: str, keys: list[int], *columns: list[Any]) -> list[Outcome]:
        """Each key's call on its actor; a dead or hung actor's calls all fail with ``actor_died``."""
        self._await_restarts()
        parts = self._split(keys, [keys, *columns])
        refs = {w: getattr(self.workers[w], method).remote(*shares) for w, (_, shares) in parts.items()}
        outcomes: list[Outcome] = [Outcome()] * len(keys)
        for w, ref in refs.items():
            positions = parts[w][0]
            try:
                answers = ray.get(ref, timeout=self.deadline_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                self.restarting.add(w)
                if isinstance(exc, ray.exceptions.GetTimeoutError):
                    ray.kill(self.workers[w], no_restart=False)
                answers = [Outcome(error="actor_died", message=f"environment actor failed: {exc}")] * len(positions)
            for position, answer in zip(positions, answers, strict=True):
                outcomes[position] = answer
        return outcomes

    def _await_restarts(self) -> None:
        """Wait until actors whose process died answer again (Ray answers a restarting actor's calls at once with
        ``ActorUnavailableError``), so that new trajectories do not reach an actor still restarting."""
        deadline = time.monotonic() + self.deadline_s
        for w in sorted(self.restarting):
            while time.monotonic() < deadline:
                try:
                    ray.get(self.workers[w].node_id.remote(), timeout=deadline - time.monotonic())
                    break
                except ray.exceptions.ActorUnavailableError:
                    time.sleep(RESTART_POLL_S)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
        self.restarting.clear()

    def nodes(self) -> list[str]:
        """The node of each environment actor."""
        return ray.get([w.node_id.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []


def with_environment(scores: Scores, groups: list[list[Trajectory]], error_score: float) -> Scores:
    """Scores of trajectories: ``reward.functions``' scores of each final answer plus the environment's reward; a
    trajectory that an environment failure ended scores ``error_score``, in all and in every function, and
    counts in ``num_errors``. The metrics gain the trajectories' (``trajectory_metrics``)."""
    flat = [t for group in groups for t in group]
    rewards = [
        error_score if t.error is not None else total + (t.env_reward or 0.0)
        for t, total in zip(flat, scores.rewards, strict=True)
    ]
    by_function = {
        name: [error_score if t.error is not None else s for t, s in zip(flat, values, strict=True)]
        for name, values in scores.by_function.items()
    }
    num_failed = sum(t.error is not None for t in flat)
    metrics = {**scores.metrics, **trajectory_metrics(groups)}
    return Scores(rewards, by_function, metrics, scores.num_errors + num_failed)
