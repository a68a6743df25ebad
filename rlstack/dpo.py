"""Direct preference optimisation on the trainer group: DPO, IPO or cDPO against a frozen reference."""

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rlstack.algorithms.dpo import comparable_logprobs, dpo_loss
from rlstack.config import DataSection, Recipe
from rlstack.controller import Controller, timed
from rlstack.data.batching import by_rank, pair_lengths
from rlstack.data.dataset import RunData
from rlstack.data.supervised import load_preference_data
from rlstack.types import PreferenceBatch, PreferencePair

Logprobs = list[tuple[float, float]]


class DPOController(Controller):
    """Each step trains on ``algorithm.batch_size`` preference pairs.

    With ``algorithm.reference: precomputed`` the initial policy (which is the reference)
    scores every training pair once before the first step, and no reference model is
    kept; ``online`` keeps a frozen reference in the trainer group. Held-out pairs are
    always scored by the reference once, for the evaluation metrics.
    """

    @staticmethod
    def load_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> RunData:
        return load_preference_data(data, tokenizer)

    def __init__(self, recipe: Recipe, run_dir: Path, data: RunData | None = None):
        super().__init__(recipe, run_dir, data)
        self.reference: dict[str, Logprobs] = {}
        if self.start_step == 0:
            self.reference["held_out"] = self.pair_logprobs(self.data.held_out)
            if self.recipe.algorithm.reference == "precomputed":
                self.reference["train"] = self.pair_logprobs(list(self.data.train))

    def pair_logprobs(self, pairs: list[PreferencePair]) -> Logprobs:
        """Current policy logprobs ``(chosen, rejected)`` of each pair, in order."""
        num_ranks = self.recipe.placement.num_trainer_ranks
        if len(pairs) < num_ranks:
            raise ValueError(f"{len(pairs)} preference pairs cannot be shared by {num_ranks} trainer ranks")
        shares = self.trainer.logprobs(by_rank(pairs, num_ranks))
        result: Logprobs = [(0.0, 0.0)] * len(pairs)
        for rank, share in enumerate(shares):
            result[rank::num_ranks] = share
        return result

    def state(self, step: int) -> dict[str, Any]:
        return {**super().state(step), "reference": self.reference}

    def resume(self, path: str) -> dict[str, Any]:
        state = super().resume(path)
        self.reference = {key: [(c, r) for c, r in logprobs] for key, logprobs in state["reference"].items()}
        return state

    def step(self, step: int) -> dict[str, Any]:
        algo = self.recipe.algorithm
        indices = [self.sampler.next_index() for _ in range(algo.batch_size)]
        pairs = [self.data.train[i] for i in indices]
        num_ranks = self.recipe.placement.num_trainer_ranks
        reference = [self.reference["train"][i] for i in indices] if "train" in self.reference else None
        shards = [
            PreferenceBatch(tuple(share), tuple(reference[rank::num_ranks]) if reference else None, len(pairs))
            for rank, share in enumerate(by_rank(pairs, num_ranks))
        ]
        metrics: dict[str, Any] = {}
        with timed(metrics, "train"):
            metrics.update(self.trainer.step(shards))
        self.policy_version += 1
        seen = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
        metrics.update({"policy_version": self.policy_version, "throughput/train_tok_s": seen / metrics["time/train"]})
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Held-out preference metrics: the policy prefers the chosen response, and DPO's implicit rewards."""
        algo = self.recipe.algorithm
        pairs: list[PreferencePair] = self.data.held_out
        lengths = pair_lengths(pairs)
        policy = comparable_logprobs(torch.tensor(self.pair_logprobs(pairs)).T, lengths, algo.dpo_loss)  # [2, n]
        reference = comparable_logprobs(torch.tensor(self.reference["held_out"]).T, lengths, algo.dpo_loss)
        loss, metrics = dpo_loss(
            policy[0], policy[1], reference[0], reference[1], len(pairs), algo.beta, algo.label_smoothing, algo.dpo_loss
        )
        return {
            "eval/loss": loss.item(),
            "eval/preference_accuracy": (policy[0] > policy[1]).float().mean().item(),
            **{f"eval/{name}": value.item() for name, value in metrics.items()},
            **self.task_accuracy(),
        }
