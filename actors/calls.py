"""Calls into an actor group, each with a deadline: an actor that dies or stops answering fails the call,
named, and the group is torn down before the caller hears of it."""

import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

ERROR_GRACE_S = 5.0
"""After one actor's call raises, how long the others get to finish: a peer's death shows up first as an error
in the ranks that were talking to it, and the dead actor is the one to name."""
HEALTH_CHECK_S = 5.0
"""How long an actor that missed a deadline gets to answer ``alive`` from its health thread."""


class ActorFailure(RuntimeError):
    """An actor of ``group`` (``trainer`` or ``rollout``) died or missed its deadline in ``call``; the group has
    been torn down."""

    def __init__(self, group: str, rank: int, call: str, message: str):
        self.group, self.rank, self.call = group, rank, call
        super().__init__(message)


class ActorGroup:
    """Actors called together. ``gather`` waits on their answers for at most ``timeout_s`` (the recipe's
    ``timeout_setting``); ``shutdown`` frees them."""

    name: str
    member: str
    """What one actor is called in messages: ``rank``, ``worker``."""
    timeout_setting: str
    timeout_s: float
    workers: list[Any]
    health_checked = False
    """Whether the workers answer ``alive`` from a thread of their own (``concurrency_group="health"``), so
    that one blocked waiting on a stopped peer is told apart from the stopped one."""

    def shutdown(self) -> None:
        raise NotImplementedError

    def gather(self, refs: list[ray.ObjectRef], call: str, start_timeout_s: float | None = None) -> list[Any]:
        """The result of each ``refs[i]``, a call into ``workers[i]``, in order. ``ActorFailure`` names the first
        actor that died, or else those that did not answer within ``timeout_s`` (``start_timeout_s`` for the
        calls that start the group, whose processes may still be starting); an error raised by the call's own
        code is raised as it is. Either way the group is shut down first."""
        timeout_s = self.timeout_s if start_timeout_s is None else start_timeout_s
        deadline = time.monotonic() + timeout_s
        pending, raised = list(refs), None
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                ray.get(ready[0])
            except RayActorError as error:
                self.shutdown()
                rank = refs.index(ready[0])
                message = f"{self.name} {self.member} {rank} died during {call} ({type(error).__name__})"
                raise ActorFailure(self.name, rank, call, message) from error
            except RayTaskError as error:
                raised = raised or error
                deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
        if raised is not None:
            self.shutdown()
            raise raised
        if pending:
            late = [refs.index(ref) for ref in pending]
            silent = self._silent(late)
            self.shutdown()
            within = (
                f"within {self.timeout_setting}={self.timeout_s:g}"
                if start_timeout_s is None
                else f"within {start_timeout_s:g} s of starting"
            )
            if silent:
                who = ", ".join(map(str, silent))
                cause = "nor a health check: its process is stopped or hung"
                message = f"{self.name} {self.member} {who} did not answer {call} {within} ({cause})"
            else:
                message = f"{self.name} {self.member} {', '.join(map(str, late))} did not finish {call} {within}"
            raise ActorFailure(self.name, (silent or late)[0], call, message)
        return ray.get(refs)

    def _silent(self, late: list[int]) -> list[int]:
        """Of the actors ``late`` on a call, those that do not answer a health check either (none without one)."""
        if not self.health_checked:
            return []
        checks = {self.workers[i].alive.remote(): i for i in late}
        answered, _ = ray.wait(list(checks), num_returns=len(checks), timeout=HEALTH_CHECK_S)
        return [i for ref, i in checks.items() if ref not in answered]
