"""Checkpoint layout, where it lives, and how it is written so that it cannot lie.

``<checkpoint.uri>/step_<k>/`` (default ``<run_dir>/checkpoints/step_<k>/``) holds HF
safetensors, the tokenizer, ``recipe.yaml``, ``trainer_state.pt`` (optimizer, scheduler,
RNG), ``controller_state.json`` (step, policy version, data order) and, written last,
``manifest.json``: every other file's size and SHA-256.

The URI is a local path or any fsspec URL (``s3://bucket/runs/a``, ``gs://...``). Trainer
rank 0 writes every file of a checkpoint, into a local staging directory that it then
uploads, and each rank resuming downloads it; so nothing assumes that the driver and the
trainer nodes share a filesystem.

A checkpoint is complete once its manifest exists, and only then:

- on a local disk the files go to a hidden sibling, ``.step_<k>.partial-<token>``, are fsynced with the
  manifest, and the directory is renamed to ``step_<k>`` in one step;
- at an fsspec URL, which has no rename, the manifest is uploaded after every other file.

Resuming checks before any actor starts that the manifest lists every part and that each file has the size it
lists (``check_resumable``); each rank then checks the checksums of what it reads (``readable``).
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

from rlstack.config import Recipe

CONTROLLER_STATE = "controller_state.json"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
REQUIRED = ("config.json", "recipe.yaml", "trainer_state.pt", CONTROLLER_STATE)
"""Files every checkpoint holds besides its weights: ``model.safetensors``, or an index and the shards it names."""
STEP_DIR = re.compile(r"step_(\d+)")
HASH_CHUNK_BYTES = 2**24

Manifest = dict[str, dict[str, Any]]
"""``{relative file name: {"bytes": size, "sha256": hex digest}}``; files uploaded by other trainer ranks at an
fsspec URL carry only their size."""


def checkpoint_base(recipe: Recipe, run_dir: Path) -> str:
    """Where a run's checkpoints go: ``checkpoint.uri``, by default ``<run_dir>/checkpoints``. A local path is made
    absolute: the trainer's ranks write it from Ray's working directory, not the driver's."""
    base = recipe.checkpoint.uri or str(run_dir / "checkpoints")
    return (base if "://" in base else str(Path(base).resolve())).rstrip("/")


def checkpoint_dir(recipe: Recipe, run_dir: Path, step: int) -> str:
    return f"{checkpoint_base(recipe, run_dir)}/step_{step}"


def checkpoint_files(recipe: Recipe, controller_state: dict[str, Any]) -> dict[str, str]:
    """The files a checkpoint holds besides the trainer's own (name: text): the recipe and the controller's
    state."""
    return {
        "recipe.yaml": yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
        CONTROLLER_STATE: json.dumps(controller_state),
    }


def file_entry(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a local file, fsynced as it is read so that the manifest never outlives it."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
        os.fsync(file.fileno())
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def manifest_of(root: Path, known: Manifest | None = None) -> Manifest:
    """The manifest of every file under ``root`` (the manifest itself excepted); entries in ``known`` are kept."""
    known = known or {}
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return {name: known.get(name) or file_entry(root / name) for name in names if name != MANIFEST}


def staging_uri(uri: str) -> str:
    """Where the trainer ranks write the checkpoint that ``commit`` makes ``uri``: a fresh hidden sibling on a
    local disk; ``uri`` itself at an fsspec URL."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not isinstance(fs, LocalFileSystem):
        return uri
    final = Path(path)
    return str(final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}")


def begin(staging: str) -> None:
    """Before any file of a checkpoint is written to ``staging``: at an fsspec URL, drop the manifest of an
    earlier attempt at the same step, so that the checkpoint is not complete until this attempt's lands."""
    fs, path = fsspec.core.url_to_fs(staging)
    if not isinstance(fs, LocalFileSystem) and fs.isfile(f"{path}/{MANIFEST}"):
        fs.rm(f"{path}/{MANIFEST}")


def commit(uri: str, staging: str, known: Manifest) -> None:
    """Make the checkpoint written at ``staging`` complete at ``uri``: write its manifest last and, on a local
    disk, rename it into place (replacing an earlier attempt at the same step). ``known`` holds the entries
    of the files the caller wrote itself."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        staged, final = Path(staging), Path(path)
        manifest = manifest_of(staged, known)
        with (staged / MANIFEST).open("w") as file:
            json.dump({"files": manifest}, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        replaced = final.parent / f".{final.name}.replaced-{uuid.uuid4().hex[:12]}"
        if final.exists():
            final.rename(replaced)
        staged.rename(final)
        fsync_dir(final.parent)
        shutil.rmtree(replaced, ignore_errors=True)
        for partial in final.parent.glob(".step_*.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)  # left by a writer that died mid-checkpoint
        return
    found = {
        info["name"].removeprefix(path.rstrip("/") + "/"): {"bytes": info["size"]}
        for info in fs.find(path, detail=True).values()
    }
    manifest = {**found, **known}
    manifest.pop(MANIFEST, None)
    fs.pipe(f"{path}/{MANIFEST}", json.dumps({"files": manifest}, indent=1).encode())


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_manifest(uri: str, setting: str = "checkpoint.resume_from") -> Manifest:
    """The manifest of the checkpoint at ``uri``; ``ValueError`` naming ``setting`` when it has none."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.isfile(f"{path}/{MANIFEST}"):
        where = "its manifest is written last, so it was never completed" if fs.isdir(path) else "no such directory"
        raise ValueError(f"{setting}={uri!r} is not an rlstack checkpoint: no {MANIFEST} ({where})")
    try:
        with fs.open(f"{path}/{MANIFEST}", "r") as file:
            files = json.load(file)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{setting}={uri!r} is not an rlstack checkpoint: unreadable {MANIFEST} ({exc})") from None
    return files


def missing_parts(uri: str, manifest: Manifest) -> list[str]:
    """The parts a checkpoint needs that its manifest does not list: ``REQUIRED`` and the weights."""
    missing = [name for name in REQUIRED if name not in manifest]
    if WEIGHTS in manifest:
        return missing
    if WEIGHTS_INDEX not in manifest:
        return [*missing, WEIGHTS]
    with fsspec.open(f"{uri.rstrip('/')}/{WEIGHTS_INDEX}", "r") as file:
        shards = sorted(set(json.load(file)["weight_map"].values()))
    return missing + [name for name in shards if name not in manifest]


def check_resumable(uri: str, backend: str | None = None, setting: str = "checkpoint.resume_from") -> None:
    """``ValueError`` naming ``setting`` unless ``uri`` is a complete checkpoint, whose optimizer state (if it
    has one) a ``backend`` trainer can load: each backend reads only its own.

    Complete: its manifest lists every part (``REQUIRED`` and the weights), and every file it lists is there
    with the listed size, so a torn copy or upload is refused here, naming what is missing or cut short.
    """
    manifest = read_manifest(uri, setting)
    fs, path = fsspec.core.url_to_fs(uri)
    missing = missing_parts(uri, manifest)
    if missing:
        raise ValueError(f"{setting}={uri!r} is not an rlstack checkpoint: no {', '.join(missing)}")
    sizes = {
        info["name"].removeprefix(path.rstrip("/") + "/"): info["size"] for info in fs.find(path, detail=True).values()
    }
    absent = [name for name in manifest if name not in sizes]
    if absent:
        raise ValueError(f"{setting}={uri!r} is torn: {', '.join(absent)} listed in its manifest but absent")
    for name, entry in manifest.items():
        if sizes[name] != entry["bytes"]:
            raise ValueError(
                f"{setting}={uri!r} is torn: {name} holds {sizes[name]} bytes, its manifest says {entry['bytes']}"
            )
    if backend is None:
        return
    with fs.open(f"{path}/recipe.yaml", "r") as file:
        written = yaml.safe_load(file)
    theirs = written.get("trainer", {}).get("backend", "fsdp2")
    if written.get("checkpoint", {}).get("optimizer", True) and theirs != backend:
        raise ValueError(
            f"{setting}={uri!r} holds the optimizer state of trainer.backend={theirs!r}, not "
            f"{backend!r}: resume with {theirs!r}, or start a new run from its export (rlstack export "
            "CHECKPOINT OUT, then model.path=OUT)"
        )


def complete_checkpoints(base: str) -> list[tuple[int, str]]:
    """``(step, uri)`` of every complete checkpoint under ``base``, oldest first."""
    fs, path = fsspec.core.url_to_fs(base)
    if not fs.isdir(path):
        return []
    found = []
    for entry in fs.ls(path, detail=False):
        match = STEP_DIR.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            uri = f"{base}/step_{match[1]}"
            try:
                check_resumable(uri)
            except ValueError:
                continue
            found.append((int(match[1]), uri))
    return sorted(found)


def latest_checkpoint(base: str) -> str | None:
    """The newest complete checkpoint under ``base``, if any."""
    found = complete_checkpoints(base)
    return found[-1][1] if found else None


def continued(recipe: Recipe, run_dir: Path) -> Recipe:
    """``recipe`` resuming from the newest complete checkpoint of the run at ``run_dir``, for a job re-submitted
    with ``checkpoint.auto_resume``; unchanged when the run has none yet (it then starts over)."""
    latest = latest_checkpoint(checkpoint_base(recipe, run_dir))
    if latest is None:
        return recipe
    return recipe.model_copy(update={"checkpoint": recipe.checkpoint.model_copy(update={"resume_from": latest})})


def prune(base: str, keep_last: int) -> list[str]:
    """Remove all but the newest ``keep_last`` complete checkpoints under ``base``; returns what was removed."""
    fs, _ = fsspec.core.url_to_fs(base)
    removed = [uri for _, uri in complete_checkpoints(base)[:-keep_last]]
    for uri in removed:
        fs.rm(fsspec.core.url_to_fs(uri)[1], recursive=True)
    return removed


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
def readable(uri: str, verify: bool = False) -> Iterator[Path]:
    """A local directory holding the checkpoint at ``uri``: the directory itself, or a downloaded copy. With
    ``verify``, every file its manifest lists is checked against the listed size and checksum first
    (``ValueError`` naming the first that differs)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        if verify:
            verify_files(uri, Path(path))
        yield Path(path)
        return
    staging = Path(tempfile.mkdtemp(prefix="rlstack-checkpoint-"))
    try:
        fs.get(f"{path.rstrip('/')}/", f"{staging}/", recursive=True)
        if verify:
            verify_files(uri, staging)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def verify_files(uri: str, local: Path) -> None:
    """``ValueError`` naming the first file of the checkpoint at ``uri`` (read at ``local``) whose size or
    checksum is not its manifest's."""
    manifest = json.loads((local / MANIFEST).read_text())["files"]
    for name, entry in manifest.items():
        file = local / name
        actual = file_entry(file) if file.is_file() else None
        if (
            actual is None
            or actual["bytes"] != entry["bytes"]
            or actual["sha256"] != entry.get("sha256", actual["sha256"])
        ):
            raise ValueError(f"checkpoint {uri!r} is corrupt: {name} is not the file its manifest lists")
