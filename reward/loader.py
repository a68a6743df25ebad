"""Resolve a recipe's reward name to a Python callable.

Two forms: ``package.module:function`` (importable from the working directory or the
environment) and ``path/to/file.py:function`` (a file, relative to the working
directory, as shipped by ``ray job submit --working-dir``).
"""

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

RewardFn = Callable[..., float]


def load_reward(spec: str) -> RewardFn:
    """Import the function named by ``spec``; ``ValueError`` names ``reward.function`` on failure."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"reward.function={spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    try:
        module = _import_file(target) if target.endswith(".py") else importlib.import_module(target)
    except Exception as exc:  # an import error in user code must name the recipe key
        raise ValueError(f"reward.function={spec!r}: cannot import {target!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"reward.function={spec!r}: {target!r} has no function {attr!r}")
    if inspect.iscoroutinefunction(fn):
        raise ValueError(f"reward.function={spec!r}: async rewards are not supported yet")
    return fn


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
