"""Training objectives: what each algorithm gives the trainer rank's one loop (``base.Objective``)."""

from actors.objectives.base import HeldOutLoss, ItemLogprobs, Objective, Policy
from actors.objectives.dpo import DPOObjective
from actors.objectives.grpo import GRPOObjective
from actors.objectives.sft import SFTObjective
from rlstack.config import Recipe

__all__ = ["HeldOutLoss", "ItemLogprobs", "Objective", "Policy", "make_objective"]


def make_objective(recipe: Recipe, pad_id: int, name: str | None = None) -> Objective:
    """The objective called ``name`` (by default the recipe's ``algorithm.name``), with the recipe's settings."""
    name = name or recipe.algorithm.name
    if name == "grpo":
        return GRPOObjective(recipe)
    if name == "sft":
        return SFTObjective(recipe, pad_id)
    if name == "dpo":
        return DPOObjective(recipe)
    raise ValueError(f"algorithm.name={name!r}: no objective of that name")
