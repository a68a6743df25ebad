"""The plug-in API for multi-turn environments: what the model talks to between its turns.

An environment is a class with two methods, plain or ``async def``::

    class Calculator(rlstack.Environment):
        def reset(self, row) -> list[Message]: ...            # the opening messages
        def step(self, messages, completion) -> Step: ...     # what follows the model's turn

A recipe names it as ``rollout.environment.fn`` (``package.module:Class`` or
``path/to/file.py:Class``) with ``kwargs`` for its constructor. Every trajectory gets an
instance of its own, built from ``kwargs``, so an instance may keep the episode's state.

``row`` is the dataset row: its fields (``answer`` and the others, as rewards receive them),
``prompt`` (the last user message) and ``messages`` (the row's chat). ``messages`` passed to
``step`` is the conversation so far, ending with the model's turn, whose text is
``completion``. A ``Step`` with ``done`` ends the trajectory; otherwise its ``observation``
is appended, as tokens through the chat template, and the model takes another turn.

Model output is untrusted: an environment that raises, hangs past
``rollout.environment.timeout_s`` or returns something other than a ``Step`` (or, from
``reset``, a list of messages) ends that trajectory with ``reward.error_score``, counted in
``env/errors``.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rlstack.data.prompts import Message

ErrorKind = Literal["exception", "timeout", "bad_value", "actor_died"]
"""How an environment call can fail, as counted in ``env/errors/<kind>``."""


@dataclass(frozen=True)
class Step:
    """What an environment answers to one model turn."""

    observation: list[Message] | None = None
    """Messages appended after the model's turn (e.g. a tool's result); ``None`` when ``done``."""
    reward: float | None = None
    """The trajectory's reward from the environment; the last one given counts, added to ``reward.functions``'
    scores of the final answer. ``None`` gives none."""
    done: bool = False
    """End the trajectory after this turn."""
    info: Mapping[str, float] = field(default_factory=dict)
    """Numbers summed over the trajectory and logged as their mean over trajectories, ``env/<key>`` (the
    calculator's ``tool_calls`` and ``tool_errors``)."""


class Environment:
    """Base class of environments; ``reset`` and ``step`` may be plain or ``async def`` methods."""

    def reset(self, row: dict[str, Any]) -> list[Message]:
        """The trajectory's opening messages; by default the row's own chat."""
        return list(row["messages"])

    def step(self, messages: list[Message], completion: str) -> Step:
        """Answer the model's turn ``completion`` (the last of ``messages``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Outcome:
    """The result of one environment call, as it crosses from the environment actor to the turn loop."""

    value: Any = None
    """The checked return value: a list of messages from ``reset``, a ``Step`` from ``step``; ``None`` on failure."""
    error: ErrorKind | None = None
    """``None``, or the kind of failure."""
    message: str = ""
    """The traceback or reason of a failure."""


def check_class(cls: Any, key: str) -> None:
    """``TypeError`` naming ``key`` unless ``cls`` is a class with callable ``reset`` and ``step``."""
    if not isinstance(cls, type):
        raise TypeError(f"{key}: {cls!r} is not a class; an environment is a class with reset and step methods")
    missing = [name for name in ("reset", "step") if not callable(getattr(cls, name, None))]
    if missing:
        raise TypeError(f"{key}: {cls.__qualname__} has no {' or '.join(missing)} method")
    if getattr(cls, "step", None) is Environment.step:
        raise TypeError(f"{key}: {cls.__qualname__} does not implement step")


def check_messages(value: Any, what: str) -> list[Message]:
    """``value`` as a list of ``{"role": str, "content": str}`` messages; ``TypeError`` saying what is wrong."""
    if not isinstance(value, list) or not value:
        raise TypeError(f"{what} must be a non-empty list of messages, got {type(value).__name__} {value!r:.200}")
    for message in value:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise TypeError(f"{what}: {message!r:.200} is not a message {{'role': str, 'content': str}}")
    return value


def check_step(value: Any) -> Step:
    """``value`` if it is a well-formed ``Step``; ``TypeError`` saying what is wrong."""
    if not isinstance(value, Step):
        raise TypeError(f"step returned {type(value).__name__} {value!r:.200}; expected rlstack.Step")
    if not isinstance(value.done, bool):
        raise TypeError(f"Step.done must be a bool, got {value.done!r:.200}")
    if value.reward is not None and (
        isinstance(value.reward, bool) or not isinstance(value.reward, int | float) or not math.isfinite(value.reward)
    ):
        raise TypeError(f"Step.reward must be a finite float or None, got {value.reward!r:.200}")
    if value.observation is None and not value.done:
        raise TypeError("Step has done=False and no observation: nothing for the model to continue from")
    if value.observation is not None:
        check_messages(value.observation, "Step.observation")
    if not isinstance(value.info, Mapping) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.info.values()
    ):
        raise TypeError(f"Step.info must map names to numbers, got {value.info!r:.200}")
    return value
