"""SFT's objective: masked cross-entropy on assistant tokens, conversations packed into rows.

Each row holds several conversations, each attending only to itself
(``rlstack.data.packing``); the loss is ``rlstack.algorithms.sft.sft_loss``, the batch's
mean negative log-likelihood per trained token.
"""

import torch

from actors.objectives.base import Align, Policy, stacked
from rlstack.algorithms import token_logprobs
from rlstack.algorithms.sft import sft_loss
from rlstack.config import Recipe
from rlstack.data.attention import packed_mask
from rlstack.data.packing import PackedRow, collate_packed, pack
from rlstack.types import SFTBatch, SFTExample


class SFTObjective:
    sum_names = ("loss", "num_tokens")

    def __init__(self, recipe: Recipe, pad_id: int):
        self.micro_batch_tokens = recipe.trainer.micro_batch_tokens
        self.pad_id = pad_id

    def micro_batches(self, batch: SFTBatch) -> list[PackedRow]:
        return self.rows(list(batch.examples))

    def rows(self, examples: list[SFTExample]) -> list[PackedRow]:
        """``examples`` packed into rows of at most ``micro_batch_tokens``."""
        groups = pack([len(e.input_ids) for e in examples], self.micro_batch_tokens)
        return [
            collate_packed(members, self.pad_id, sum(len(e.input_ids) for e in members))
            for members in ([examples[i] for i in indices] for indices in groups)
        ]

    def padding(self, batch: SFTBatch | None = None) -> PackedRow:
        return collate_packed([SFTExample((self.pad_id,), (0,))], self.pad_id, 1)

    def loss(self, policy: Policy, batch: SFTBatch, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor]:
        mask = row.target_mask.to(policy.device)
        loss, _ = sft_loss(packed_logprobs(policy, row), mask, batch.num_tokens)
        return loss, stacked(loss, mask.sum())

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return dict(sums)

    @torch.no_grad()
    def evaluate(self, policy: Policy, examples: list[SFTExample], align: Align) -> torch.Tensor:
        """``[2]`` sums of held-out negative log-likelihood and trained tokens, to all-reduce."""
        sums = torch.zeros(2, dtype=torch.float64, device=policy.device)  # nll, tokens
        for row in align(self.rows(examples), self.padding()):
            mask = row.target_mask.to(policy.device)
            sums += torch.stack([-(packed_logprobs(policy, row) * mask).sum().double(), mask.sum().double()])
        return sums

    def evaluation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """Mean negative log-likelihood per trained token, over all ranks' shares."""
        return {"loss": (sums[0] / sums[1].clamp(min=1)).item(), "num_tokens": sums[1].item()}


def packed_logprobs(policy: Policy, row: PackedRow) -> torch.Tensor:
    """``[1, L]`` logprobs of each packed position's target, every conversation attending only to itself."""
    position_ids = row.position_ids.to(policy.device)
    logits = policy.model(
        input_ids=row.input_ids.to(policy.device),
        position_ids=position_ids,
        attention_mask=packed_mask(position_ids, policy.attention, policy.device),
        use_cache=False,
    ).logits
    return token_logprobs(logits, row.target_ids.to(policy.device))
