"""The plug-in API for reward functions.

A reward is a plain function of one completion::

    def my_reward(completion: str, *, prompt: str, **row) -> float

``row`` holds the dataset row's fields (``answer``, ``ground_truth``...). It may return
a float or ``{"score": float, **extras}``; numeric extras are logged. ``async def``
works the same way. Two keywords are passed only to functions that name them:
``completion_tokens`` (the response length in tokens) and ``finish_reason``
(``stop`` or ``length``).

For expensive or model-based rewards, the batched form scores many samples per call::

    @batched
    def my_batched(completions: list[str], *, prompts: list[str], rows: list[dict]) -> list[float]
"""

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

BATCHED_ATTRIBUTE = "rlstack_batched"
OPTIONAL_KEYWORDS = ("completion_tokens", "finish_reason")


def batched(fn: F) -> F:
    """Mark ``fn`` (a function or a class with ``__call__``) as scoring lists of samples at once."""
    setattr(fn, BATCHED_ATTRIBUTE, True)
    return fn


def is_batched(fn: Callable[..., Any]) -> bool:
    target = getattr(fn, "func", fn)  # functools.partial keeps the marker on .func
    return bool(getattr(target, BATCHED_ATTRIBUTE, False) or getattr(type(target), BATCHED_ATTRIBUTE, False))


def is_async(fn: Callable[..., Any]) -> bool:
    target = getattr(fn, "func", fn)
    if inspect.isfunction(target) or inspect.ismethod(target):
        return inspect.iscoroutinefunction(target)
    return inspect.iscoroutinefunction(type(target).__call__)  # an instance of a reward class


def optional_keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """The optional keywords ``fn`` names explicitly in its signature."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(name for name in OPTIONAL_KEYWORDS if name in parameters)


def to_score(value: Any) -> tuple[float, dict[str, float]]:
    """``(score, extras)`` from a reward's return value; ``TypeError`` if it is not a finite number.

    >>> to_score(1)
    (1.0, {})
    >>> to_score({"score": 0.5, "length": 12, "note": "x"})
    (0.5, {'length': 12.0})
    """
    extras: dict[str, float] = {}
    if isinstance(value, dict):
        if "score" not in value:
            raise TypeError(f"reward returned a dict without 'score': {sorted(value)}")
        extras = {
            k: float(v)
            for k, v in value.items()
            if k != "score" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        value = value["score"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"reward returned {type(value).__name__} {value!r}; expected a float")
    if not math.isfinite(value):
        raise ValueError(f"reward returned {value!r}; expected a finite float")
    return float(value), extras
