"""GRPO's objective: the PPO-clip surrogate on group-relative advantages, with an optional KL penalty.

The samples run as shared-prompt rows (``rlstack.data.shared_prompt``): each prompt
once, then its responses. The math is ``rlstack.algorithms``' (``clipped_surrogate``,
``kl_penalty``, ``aggregate``, ``correction_weights``); normalisers come from the whole
batch, so a micro-batch's loss is its share of the batch's.

Two settings of the same loss depart from GRPO's paper:

- ``algorithm.importance_level: sequence`` is GSPO's per-sequence ratio.
- ``algorithm.rollout_correction: tis | mis`` (veRL's and others' rollout correction).
  Without it, "old" in the PPO ratio is the engine's logprobs, so the ratio mixes the
  trainer/engine gap into the trust region. With it, "old" is the trainer's logprobs at
  the behaviour policy and the gap goes into TIS's or MIS's weight. Those logprobs are
  this micro-batch's own, detached: the recipe allows a correction only with
  ``num_minibatches=1``, so every step's one minibatch is scored by the weights that
  produced (or, with a staleness bound, last trained before) its samples, not yet
  updated. The PPO ratio is then 1 (its clip never binds). Under staleness the weights
  are the pre-update (proximal) policy, not the sampling version's, so the correction's
  ratio covers both the staleness and the engine gap (AReaL's decoupled PPO).
"""

import torch

from actors.objectives.base import Align, Policy, stacked
from rlstack.algorithms import (
    CORRECTION_SUMS,
    aggregate,
    clipped_surrogate,
    correction_weights,
    effective_sample_size,
    kl_penalty,
    token_logprobs,
)
from rlstack.config import Recipe
from rlstack.data.batching import collate, micro_batches, padding_sample
from rlstack.data.shared_prompt import collate_shared_prompt, shared_prompt_rows
from rlstack.forward import padded_response_logits, shared_prompt_scores
from rlstack.types import Sample, TrainBatch


class GRPOObjective:
    def __init__(self, recipe: Recipe):
        self.algo = recipe.algorithm
        self.corrects = self.algo.rollout_correction != "none"
        self.sum_names = ("loss", "tokens", "clipped", "entropy", "kl", "logprob_mismatch") + (
            CORRECTION_SUMS if self.corrects else ()
        )
        self.temperature = recipe.rollout.temperature
        self.micro_batch_tokens = recipe.trainer.micro_batch_tokens

    def micro_batches(self, batch: TrainBatch) -> list[list[list[Sample]]]:
        return shared_prompt_rows(list(batch.samples), self.micro_batch_tokens)

    def padding(self, batch: TrainBatch) -> list[list[Sample]]:
        return [[padding_sample(batch.samples[0])]]

    def loss(self, policy: Policy, batch: TrainBatch, row: list[list[Sample]]) -> tuple[torch.Tensor, torch.Tensor]:
        algo, device = self.algo, policy.device
        data = collate_shared_prompt(row, policy.pad_id)
        attention_mask = data.attention_mask(device, policy.attention)  # built once, for the policy and the reference
        mask = data.response_mask.to(device)
        row_logprobs, row_entropies = shared_prompt_scores(policy.model, data, device, attention_mask, self.temperature)
        logprobs = data.scatter(row_logprobs)  # [B, R]
        engine = data.old_logprobs.to(device)  # [B, R]
        old, weights = engine, None
        correction_sums: dict[str, torch.Tensor] = {}
        if algo.rollout_correction != "none":
            old = logprobs.detach()  # the trainer at the behaviour policy: the step's only minibatch, not yet updated
            weights, correction_sums = correction_weights(
                old, engine, mask, algo.rollout_correction, algo.correction_level, algo.correction_cap
            )
        token_loss, clipped = clipped_surrogate(
            logprobs, old, data.advantages.to(device), algo.clip_low, algo.clip_high, algo.importance_level, mask
        )
        if weights is not None:
            token_loss = token_loss * weights  # [B, R]; the KL penalty below is not reweighted
        kl = torch.zeros_like(token_loss)
        if policy.reference is not None:
            with torch.no_grad():
                ref_logprobs, _ = shared_prompt_scores(policy.reference, data, device, attention_mask, self.temperature)
                ref = data.scatter(ref_logprobs)
            kl = kl_penalty(logprobs, ref, algo.kl_estimator)
            token_loss = token_loss + algo.kl_coef * kl
        loss = aggregate(token_loss, mask, algo.loss_agg, batch.num_tokens, batch.num_seqs, batch.max_tokens)
        sums = stacked(
            loss,
            mask.sum(),
            (clipped * mask).sum(),
            (data.scatter(row_entropies) * mask).sum(),
            (kl.detach() * mask).sum(),
            ((logprobs.detach() - engine).abs() * mask).sum(),
            *(correction_sums[name] for name in CORRECTION_SUMS if self.corrects),
        )
        return loss, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = max(sums["tokens"], 1.0)
        metrics = {
            "loss": sums["loss"],
            "clip_fraction": sums["clipped"] / tokens,
            "entropy": sums["entropy"] / tokens,
            "kl": sums["kl"] / tokens,
            "logprob_mismatch": sums["logprob_mismatch"] / tokens,
        }
        if self.corrects:
            metrics["correction/mismatch_kl"] = sums["mismatch_kl"] / tokens  # k3 of KL(engine || trainer)
            metrics["correction/fraction"] = sums["corrected"] / tokens  # tokens truncated (tis) or masked (mis)
            metrics["correction/ess"] = effective_sample_size(sums["ratio"], sums["ratio_sq"], sums["units"])
        return metrics

    @torch.no_grad()
    def logprobs(self, policy: Policy, samples: list[Sample], align: Align) -> list[list[float]]:
        """Policy logprobs of each sample's response tokens, at the sampling temperature, in ``samples`` order,
        from the padded layout (the reference the shared-prompt rows are checked against)."""
        result: dict[int, list[float]] = {}  # by id(sample): micro-batches sort samples by length
        groups = micro_batches(samples, self.micro_batch_tokens)
        for group in align(groups, [padding_sample(samples[0])]):
            data = collate(group, policy.pad_id)
            logits = padded_response_logits(policy.model, data, policy.device)
            logprobs = token_logprobs(logits, data.response_ids.to(policy.device), self.temperature)
            for sample, row in zip(group, logprobs.cpu(), strict=True):
                if not sample.masked:
                    result[id(sample)] = row[: len(sample.completion.token_ids)].tolist()
        return [result[id(sample)] for sample in samples]
