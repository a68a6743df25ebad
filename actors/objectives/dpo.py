"""DPO's objective: DPO, IPO or cDPO against a frozen reference (precomputed, or a model kept online).

Chosen and rejected responses of a micro-batch's pairs run side by side, padded
(``2 * n * longest`` tokens under ``trainer.micro_batch_tokens``). IPO compares logprobs
averaged over each response's tokens, DPO their sums (``comparable_logprobs``); the loss
is ``rlstack.algorithms.dpo.dpo_loss``.
"""

import torch

from actors.objectives.base import Align, Policy
from rlstack.algorithms import token_logprobs
from rlstack.algorithms.dpo import comparable_logprobs, dpo_loss
from rlstack.config import Recipe
from rlstack.data.batching import collate, pair_lengths, response_sample
from rlstack.forward import padded_response_logits
from rlstack.types import PreferenceBatch, PreferencePair

PairIndices = list[int] | None
"""A micro-batch: indices of the batch's pairs, or ``None`` for padding (the first pair, weighted 0)."""


class DPOObjective:
    sum_names = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")

    def __init__(self, recipe: Recipe):
        self.algo = recipe.algorithm
        self.micro_batch_tokens = recipe.trainer.micro_batch_tokens

    def micro_batches(self, batch: PreferenceBatch) -> list[PairIndices]:
        return self.groups(list(batch.pairs))

    def groups(self, pairs: list[PreferencePair]) -> list[PairIndices]:
        """Pair indices per micro-batch: chosen and rejected together fill ``2 * n * longest`` tokens."""
        groups: list[PairIndices] = []
        current: list[int] = []
        longest = 0
        for i, p in enumerate(pairs):
            size = len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))
            if current and 2 * (len(current) + 1) * max(longest, size) > self.micro_batch_tokens:
                groups.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, size)
        if current:
            groups.append(current)
        return groups

    def padding(self, batch: PreferenceBatch | None = None) -> PairIndices:
        return None

    def loss(self, policy: Policy, batch: PreferenceBatch, group: PairIndices) -> tuple[torch.Tensor, torch.Tensor]:
        algo = self.algo
        pairs = list(batch.pairs)
        members = [pairs[i] for i in group] if group is not None else pairs[:1]
        chosen_rejected = pair_logprobs(policy, policy.model, members)  # [2, n]
        if batch.reference is not None:
            reference = torch.tensor([batch.reference[i] for i in (group or [0])], device=policy.device).T
        else:
            with torch.no_grad():
                reference = pair_logprobs(policy, policy.reference, members)  # type: ignore[arg-type]
        lengths = pair_lengths(members).to(policy.device)
        chosen_rejected = comparable_logprobs(chosen_rejected, lengths, algo.dpo_loss)
        reference = comparable_logprobs(reference, lengths, algo.dpo_loss)
        loss, metrics = dpo_loss(
            chosen_rejected[0],
            chosen_rejected[1],
            reference[0],
            reference[1],
            batch.num_pairs,
            algo.beta,
            algo.label_smoothing,
            algo.dpo_loss,
        )
        weight = 0.0 if group is None else 1.0  # a padding micro-batch only keeps the collectives in step
        sums = weight * torch.stack([loss.detach().double(), *(m.double() for m in metrics.values())])
        return loss * weight, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return dict(sums)

    @torch.no_grad()
    def logprobs(self, policy: Policy, pairs: list[PreferencePair], align: Align) -> list[tuple[float, float]]:
        """Policy logprobs ``(chosen, rejected)`` of each pair, summed over the response tokens."""
        result: list[tuple[float, float]] = []
        for group in align(self.groups(pairs), None):
            logprobs = pair_logprobs(policy, policy.model, [pairs[i] for i in group] if group else pairs[:1])
            if group is not None:
                result += [(c, r) for c, r in logprobs.T.tolist()]
        return result


def pair_logprobs(policy: Policy, model: torch.nn.Module, pairs: list[PreferencePair]) -> torch.Tensor:
    """``[2, n]`` summed logprobs of the chosen (row 0) and rejected (row 1) responses."""
    samples = [response_sample(p.prompt_ids, p.chosen_ids) for p in pairs]
    samples += [response_sample(p.prompt_ids, p.rejected_ids) for p in pairs]
    data = collate(samples, policy.pad_id)
    logprobs = token_logprobs(padded_response_logits(model, data, policy.device), data.response_ids.to(policy.device))
    return (logprobs * data.response_mask.to(policy.device)).sum(-1).view(2, len(pairs))
