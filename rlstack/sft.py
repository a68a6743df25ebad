"""Supervised fine-tuning on the trainer group: masked cross-entropy on assistant tokens, packed."""

from typing import Any

from transformers import PreTrainedTokenizerBase

from rlstack.config import DataSection
from rlstack.controller import Controller, timed
from rlstack.data.batching import by_rank
from rlstack.data.dataset import RunData
from rlstack.data.supervised import load_sft_data
from rlstack.types import SFTBatch, SFTExample


def num_trained_tokens(example: SFTExample) -> int:
    """Tokens that are targets of the loss: assistant tokens after the first token of the row."""
    return sum(example.loss_mask[1:])


class SFTController(Controller):
    """Each step trains on ``algorithm.batch_size`` conversations; evaluation reports held-out loss (and task
    accuracy on the built-in task)."""

    @staticmethod
    def load_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> RunData:
        return load_sft_data(data, tokenizer)

    def step(self, step: int) -> dict[str, Any]:
        examples: list[SFTExample] = self.sampler.next_batch(self.recipe.algorithm.batch_size)
        num_tokens = sum(num_trained_tokens(e) for e in examples)
        shards = by_rank(examples, self.recipe.placement.num_trainer_ranks)
        metrics: dict[str, Any] = {}
        with timed(metrics, "train"):
            metrics.update(self.trainer.step([SFTBatch(tuple(s), num_tokens) for s in shards]))
        self.policy_version += 1
        seen = sum(len(e.input_ids) for e in examples)
        metrics.update({"policy_version": self.policy_version, "throughput/train_tok_s": seen / metrics["time/train"]})
        return metrics

    def evaluate(self) -> dict[str, float]:
        held_out = by_rank(self.data.held_out, self.recipe.placement.num_trainer_ranks)
        return {"eval/loss": self.trainer.evaluate(held_out)["loss"], **self.task_accuracy()}
