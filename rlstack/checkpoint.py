"""Checkpoint layout and where it lives.

``<checkpoint.uri>/step_<k>/`` (default ``<run_dir>/checkpoints/step_<k>/``) holds HF
safetensors, the tokenizer, ``recipe.yaml``, ``trainer_state.pt`` (optimizer, scheduler,
RNG) and ``controller_state.json`` (step, policy version, data order).

The URI is a local path or any fsspec URL (``s3://bucket/runs/a``, ``gs://...``). Trainer
rank 0 writes every file of a checkpoint, into a local staging directory that it then
uploads, and each rank resuming downloads it; so nothing assumes that the driver and the
trainer nodes share a filesystem.
"""

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

from rlstack.config import Recipe

CONTROLLER_STATE = "controller_state.json"
REQUIRED = ("trainer_state.pt", CONTROLLER_STATE, "config.json")


def checkpoint_dir(recipe: Recipe, run_dir: Path, step: int) -> str:
    base = recipe.checkpoint.uri or str(run_dir / "checkpoints")
    return f"{base.rstrip('/')}/step_{step}"


def checkpoint_files(recipe: Recipe, controller_state: dict[str, Any]) -> dict[str, str]:
    """The files a checkpoint holds besides the trainer's own (name: text): the recipe and the controller's
    state."""
    return {
        "recipe.yaml": yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
        CONTROLLER_STATE: json.dumps(controller_state),
    }


def check_resumable(uri: str, backend: str | None = None) -> None:
    """``ValueError`` naming ``checkpoint.resume_from`` unless ``uri`` is a complete checkpoint, whose optimizer
    state (if it has one) a ``backend`` trainer can load: each backend reads only its own."""
    fs, path = fsspec.core.url_to_fs(uri)
    missing = [name for name in REQUIRED if not fs.isfile(f"{path}/{name}")]
    if missing:
        raise ValueError(f"checkpoint.resume_from={uri!r} is not an rlstack checkpoint: no {', '.join(missing)}")
    if backend is None or not fs.isfile(f"{path}/recipe.yaml"):
        return
    with fs.open(f"{path}/recipe.yaml", "r") as file:
        written = yaml.safe_load(file)
    theirs = written.get("trainer", {}).get("backend", "fsdp2")
    if written.get("checkpoint", {}).get("optimizer", True) and theirs != backend:
        raise ValueError(
            f"checkpoint.resume_from={uri!r} holds the optimizer state of trainer.backend={theirs!r}, not "
            f"{backend!r}: resume with {theirs!r}, or start a new run from its export (rlstack export "
            "CHECKPOINT OUT, then model.path=OUT)"
        )


def load_controller_state(uri: str) -> dict[str, Any]:
    with fsspec.open(f"{uri.rstrip('/')}/{CONTROLLER_STATE}", "r") as file:
        return json.load(file)


@contextmanager
def writable(uri: str) -> Iterator[Path]:
    """A local directory to write a checkpoint into; uploaded to ``uri`` on exit unless ``uri`` is local."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    staging = Path(tempfile.mkdtemp(prefix="rlstack-checkpoint-"))
    try:
        yield staging
        fs.put(f"{staging}/", path, recursive=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def readable(uri: str) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``uri``: the directory itself, or a downloaded copy."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        yield Path(path)
        return
    staging = Path(tempfile.mkdtemp(prefix="rlstack-checkpoint-"))
    try:
        fs.get(f"{path.rstrip('/')}/", f"{staging}/", recursive=True)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
