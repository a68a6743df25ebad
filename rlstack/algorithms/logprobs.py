"""Logprobs and entropy of tokens under a model's logits."""

import torch


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` at the given tokens.

    Args:
        logits: ``[B, T, V]``, any float dtype; computed in float32.
        token_ids: ``[B, T]``.

    Returns:
        ``[B, T]`` float32 logprobs. ``gather - logsumexp`` avoids materialising the
        ``[B, T, V]`` log-softmax.
    """
    logits = at_temperature(logits.float(), temperature)
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - logits.logsumexp(dim=-1)


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``; at 1 the logits themselves, without a ``[..., V]`` copy."""
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` entropy ``H = logsumexp(z) - sum softmax(z) * z`` of ``logits: [B, T, V]``."""
    logits = logits.float()
    return logits.logsumexp(dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)
