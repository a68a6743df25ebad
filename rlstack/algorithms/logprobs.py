"""Logprobs and entropy of tokens under a model's logits."""

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


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


def chunked_token_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    token_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` and ``token_entropy`` of ``logits = head(hidden)``, ``chunk_tokens`` rows at a time.

    Args:
        hidden: ``[N, H]`` final hidden states, one row per predicted token.
        head: the output projection, ``[n, H] -> [n, V]``.
        token_ids: ``[N]``.

    Returns:
        ``[N]`` float32 logprobs (differentiable) and ``[N]`` entropies of the tempered distribution (detached).
        Each chunk's logits are recomputed in backward (activation checkpointing), so at most
        ``[chunk_tokens, V]`` of them exist at once, instead of ``[N, V]``: with a 49k vocabulary, 200 MB rather
        than 2 GB for ten thousand tokens. The cost is one more ``head`` forward per chunk.
    """
    logprobs, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows, targets = hidden[start : start + chunk_tokens], token_ids[start : start + chunk_tokens]
        chunk = checkpoint(_chunk_scores, head, rows, targets, temperature, use_reentrant=False)
        logprobs.append(chunk[0])
        entropies.append(chunk[1])
    if not logprobs:
        return hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(logprobs), torch.cat(entropies)


def _chunk_scores(
    head: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = at_temperature(head(rows).float(), temperature)  # [n, V]
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    return logprobs, token_entropy(logits.detach())
