"""The PPO-clip surrogate of GRPO and its loss aggregations.

Per token, with ``ratio = exp(logprobs - old_logprobs)`` and sequence advantage ``A``
(PPO, https://arxiv.org/abs/1707.06347; GRPO eq. 3)::

    loss_t = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)

``clip_high > clip_low`` is DAPO's clip-higher (https://arxiv.org/abs/2503.14476). The
log-ratio is clamped to [-10, 10] before ``exp`` so a trainer/engine mismatch cannot
overflow.

GRPO, Dr.GRPO and DAPO differ in how token losses become one number (``aggregate``).
Normalisers are passed in, not computed from the mask, so that a batch split into
micro-batches and ranks sums to exactly the loss of the whole batch.
"""

from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss.

    Args:
        logprobs: ``[B, T]`` current policy logprobs of the sampled tokens.
        old_logprobs: ``[B, T]`` logprobs of the policy that sampled them (no gradient).
        advantages: ``[B]`` one advantage per sequence.

    Returns:
        ``loss: [B, T]`` and ``clipped: [B, T]`` bool, true where the clip was active.
    """
    ratio = (logprobs - old_logprobs.detach()).clamp(-10.0, 10.0).exp()  # [B, T]
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
