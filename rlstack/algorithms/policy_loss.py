"""The PPO-clip surrogate of GRPO and its loss aggregations.

Per token, with ``ratio = exp(logprobs - old_logprobs)`` and sequence advantage ``A``
(PPO, https://arxiv.org/abs/1707.06347; GRPO eq. 3)::

    loss_t = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

``clip_high > clip_low`` is DAPO's clip-higher (https://arxiv.org/abs/2503.14476).

``level="sequence"`` is GSPO (https://arxiv.org/abs/2507.18071): one length-normalised
ratio per sequence, the geometric mean of its token ratios,
``s_i = exp(mean_t(logprobs_it - old_logprobs_it))`` over its response tokens, clipped as
above with the sequence's advantage. Every token of sequence ``i`` gets the loss of
``s_i``, so ``seq_mean_token_mean`` aggregation gives GSPO's objective exactly (the mean
over sequences); ``grad(s_i) = s_i / |y_i| * sum_t grad(logprobs_it)``, so every token
of a sequence gets the same weight, as in GSPO. GSPO clips far tighter than PPO
(the paper uses 3e-4 and 4e-4).

The log-ratio (per token, or its per-sequence mean) is clamped to [-10, 10] before ``exp``
so a trainer/engine mismatch cannot overflow.

GRPO, Dr.GRPO and DAPO differ in how token losses become one number (``aggregate``).
Normalisers are passed in, not computed from the mask, so that a batch split into
micro-batches and ranks sums to exactly the loss of the whole batch.
"""

from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
ImportanceLevel = Literal["token", "sequence"]


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    level: ImportanceLevel = "token",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss, with per-token (PPO, GRPO) or per-sequence (GSPO) ratios.

    Args:
        logprobs: ``[B, T]`` current policy logprobs of the sampled tokens.
        old_logprobs: ``[B, T]`` logprobs of the policy that sampled them (no gradient).
        advantages: ``[B]`` one advantage per sequence.
        level: ``token``: ``ratio_it = exp(logprobs_it - old_it)``; ``sequence``: GSPO's ``s_i`` for every token.
        mask: ``[B, T]`` float, 1 on response tokens; needed by ``level="sequence"`` to take the mean.

    Returns:
        ``loss: [B, T]`` and ``clipped: [B, T]`` bool, true where the clip was active (with ``sequence``, on
        every token of a clipped sequence).
    """
    log_ratio = logprobs - old_logprobs.detach()  # [B, T]
    if level == "sequence":
        assert mask is not None, "a sequence-level ratio needs the response mask"
        seq_log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # [B, 1]
        log_ratio = seq_log_ratio.expand_as(logprobs)  # [B, T], s_i's log on each of sequence i's tokens
    elif level != "token":
        raise ValueError(f"algorithm.importance_level={level!r}: expected token or sequence")
    ratio = log_ratio.clamp(-10.0, 10.0).exp()  # [B, T]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    num_tokens: int,
    num_seqs: int,
    max_tokens: int,
) -> torch.Tensor:
    """Sum of this micro-batch's share of the batch loss.

    Args:
        token_loss: ``[B, T]``.
        mask: ``[B, T]`` float, 1 on response tokens.
        mode:
            ``token_mean`` (DAPO): ``sum(loss) / num_tokens``, every token weighs the same;
            ``seq_mean_token_mean`` (GRPO): ``sum_i mean_t(loss_i) / num_seqs``;
            ``seq_mean_token_sum_norm`` (Dr.GRPO): ``sum(loss) / (num_seqs * max_tokens)``.
        num_tokens: response tokens in the whole batch, across micro-batches and ranks.
        num_seqs: sequences in the whole batch.
        max_tokens: the response length cap, Dr.GRPO's constant.
    """
    masked = token_loss * mask
    if mode == "token_mean":
        return masked.sum() / num_tokens
    if mode == "seq_mean_token_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_seqs
    if mode == "seq_mean_token_sum_norm":
        return masked.sum() / (num_seqs * max_tokens)
    raise ValueError(
        f"algorithm.loss_agg={mode!r}: expected token_mean, seq_mean_token_mean or seq_mean_token_sum_norm"
    )
