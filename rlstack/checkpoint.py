"""Checkpoint layout: ``<run_dir>/checkpoints/step_<k>/`` holds HF safetensors, the
tokenizer, ``recipe.yaml`` and ``trainer_state.pt`` (optimizer, scheduler, RNG)."""

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from rlstack.config import Recipe

if TYPE_CHECKING:
    from actors.trainer import TrainerGroup


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step}"


def save_checkpoint(trainer: "TrainerGroup", recipe: Recipe, run_dir: Path, step: int) -> Path:
    target = checkpoint_dir(run_dir, step)
    trainer.save(str(target), optimizer=recipe.checkpoint.optimizer)
    (target / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return target
