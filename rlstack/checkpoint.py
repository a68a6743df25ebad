"""Checkpoint layout: ``<run_dir>/checkpoints/step_<k>/`` holds HF safetensors, the
tokenizer, ``recipe.yaml``, ``trainer_state.pt`` (optimizer, scheduler, RNG) and
``controller_state.json`` (step, policy version, data order)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rlstack.config import Recipe

if TYPE_CHECKING:
    from actors.trainer import TrainerGroup


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step}"


CONTROLLER_STATE = "controller_state.json"


def save_checkpoint(
    trainer: "TrainerGroup", recipe: Recipe, run_dir: Path, step: int, controller_state: dict[str, Any]
) -> Path:
    target = checkpoint_dir(run_dir, step)
    trainer.save(str(target), optimizer=recipe.checkpoint.optimizer)
    (target / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    (target / CONTROLLER_STATE).write_text(json.dumps(controller_state))
    return target


def check_resumable(path: str) -> None:
    """``ValueError`` naming ``checkpoint.resume_from`` unless ``path`` is a complete checkpoint."""
    missing = [n for n in ("trainer_state.pt", CONTROLLER_STATE, "config.json") if not (Path(path) / n).is_file()]
    if missing:
        raise ValueError(f"checkpoint.resume_from={path!r} is not an rlstack checkpoint: no {', '.join(missing)}")


def load_controller_state(path: str) -> dict[str, Any]:
    return json.loads((Path(path) / CONTROLLER_STATE).read_text())
