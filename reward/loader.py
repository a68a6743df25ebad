"""Resolve a recipe's reward reference to a Python callable.

Three forms: a registry name (``exact_match``, or one registered through the
``rlstack.rewards`` entry points), ``package.module:function``, and
``path/to/file.py:function`` (relative to the working directory, as shipped by
``ray job submit --working-dir``). A reference may name a class, which is instantiated
with the recipe's ``kwargs``; a function gets the ``kwargs`` bound.

The run's preflight imports each reference with a time limit (``reward.import_timeout_s``), so a module
that hangs at import, or ends the process there with ``SystemExit``, fails the run before it starts.
"""

import difflib
import functools
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from reward.registry import registered


def resolve(spec: str, key: str = "reward", timeout_s: float | None = None) -> Callable[..., Any]:
    """Import the object ``spec`` names, waiting at most ``timeout_s`` for its module's import (``None``: no
    limit); ``ValueError`` naming ``key`` and the reason on failure."""
    if ":" not in spec:
        names = registered()
        if spec not in names:
            close = difflib.get_close_matches(spec, list(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; registered: {sorted(names)}"
            raise ValueError(f"{key}={spec!r} is not a registered reward{hint}")
        spec = names[spec]
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"{key}={spec!r}: expected a name, 'package.module:function' or 'path/to/file.py:function'")
    try:
        module = _import_within(target, timeout_s)
    except TimeoutError:
        raise ValueError(
            f"{key}={spec!r}: importing {target!r} took more than {timeout_s:g} s (reward.import_timeout_s)"
        ) from None
    except BaseException as exc:  # an import error in user code, SystemExit included, must name the recipe key
        raise ValueError(f"{key}={spec!r}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"{key}={spec!r}: {target!r} has no function {attr!r}")
    return fn


def instantiate(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """A class becomes an instance built from ``kwargs``; a function gets ``kwargs`` bound."""
    if isinstance(fn, type):
        return fn(**kwargs)
    return functools.partial(fn, **kwargs) if kwargs else fn


def _import_within(target: str, timeout_s: float | None) -> ModuleType:
    """Import ``target`` (a module name or a ``.py`` path); with a ``timeout_s``, in a daemon thread that is
    left behind, still importing, if it takes longer (``TimeoutError``). Whatever the import raises is raised
    here, ``SystemExit`` and ``KeyboardInterrupt`` included."""

    def run() -> ModuleType:
        return _import_file(target) if target.endswith(".py") else importlib.import_module(target)

    if timeout_s is None:
        return run()
    outcome: list[ModuleType | BaseException] = []

    def keep() -> None:
        try:
            outcome.append(run())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome.append(exc)

    thread = threading.Thread(target=keep, name=f"import {target}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise TimeoutError(target)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _import_file(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no file {str(file.resolve())!r}")
    name = f"rlstack_reward_{file.stem}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module
