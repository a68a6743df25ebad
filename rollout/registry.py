"""Build the engine a recipe names."""

import torch

from rlstack.config import Recipe
from rollout.base import Engine


def make_engine(recipe: Recipe) -> Engine:
    dtype = getattr(torch, recipe.rollout.dtype)
    if recipe.rollout.engine == "hf":
        from rollout.hf_engine import HFEngine

        return HFEngine(recipe.model.path, dtype=dtype, device=recipe.placement.device, seed=recipe.model.seed)
    raise ValueError(f"rollout.engine={recipe.rollout.engine!r}: unknown engine")
