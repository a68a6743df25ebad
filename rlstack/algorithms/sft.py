"""Masked next-token cross-entropy for supervised fine-tuning.

With ``logprobs`` the policy's logprobs of the target tokens and ``mask`` 1 on the
assistant tokens that count::

    loss = -sum_{b,t} mask[b, t] * logprobs[b, t] / num_tokens

``num_tokens`` is passed in, not computed from the mask: it counts the masked-in tokens of
the whole batch, so micro-batches and ranks sum to exactly the whole batch's token mean
(``token_mean`` in ``policy_loss.py``).
"""

import torch


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, num_tokens: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the batch's mean negative log-likelihood.

    Args:
        logprobs: ``[B, T]`` policy logprobs of the target tokens.
        mask: ``[B, T]`` float, 1 on assistant tokens that count in the loss.
        num_tokens: masked-in tokens of the whole batch, across micro-batches and ranks.

    Returns:
        Scalar ``loss`` and metrics: ``num_tokens``, the masked-in tokens of this
        micro-batch (a detached 0-dim tensor, so summing needs no host sync).
    """
    loss = -(logprobs * mask).sum() / num_tokens
    return loss, {"num_tokens": mask.sum().detach()}
