"""AdamW and the LR schedule, shared by every trainer backend."""

import math
from collections.abc import Iterable

import torch

from rlstack.config import Recipe, TrainerSection


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """LR factor at optimizer ``step``: linear warm-up, then constant, cosine or linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 1.0


def adamw(params: Iterable[torch.nn.Parameter], trainer: TrainerSection) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=trainer.lr, betas=trainer.betas, weight_decay=trainer.weight_decay)


def lr_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """``trainer.lr`` times ``lr_multiplier`` over every optimizer step of the run."""
    trainer = recipe.trainer
    total = trainer.num_steps * recipe.algorithm.num_minibatches
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, trainer.warmup_steps, total, trainer.lr_schedule)
    )
