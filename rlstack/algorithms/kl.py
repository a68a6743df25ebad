"""Per-token estimators of KL(policy || reference).

With ``log_r = ref_logprobs - logprobs`` for tokens sampled from the policy
(Schulman, http://joschu.net/blog/kl-approx.html)::

    k1 = -log_r                 unbiased, can be negative
    k2 = log_r ** 2 / 2         biased, low variance
    k3 = exp(log_r) - 1 - log_r unbiased, always >= 0 (GRPO's choice)

``log_r`` is clamped to [-10, 10] before ``exp`` so that a reference far from the policy
cannot overflow k3.
"""

from typing import Literal

import torch

Estimator = Literal["k1", "k2", "k3"]


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Estimator = "k3") -> torch.Tensor:
    """Per-token KL estimate.

    Args:
        logprobs: ``[B, T]`` policy logprobs of the sampled tokens (gradient flows here).
        ref_logprobs: ``[B, T]`` reference logprobs of the same tokens (no gradient).
        estimator: ``k1``, ``k2`` or ``k3``.

    Returns:
        ``[B, T]`` KL estimate per token.
    """
    log_r = (ref_logprobs.detach() - logprobs).clamp(-10.0, 10.0)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r.square()
    if estimator == "k3":
        return log_r.exp() - 1.0 - log_r
    raise ValueError(f"algorithm.kl_estimator={estimator!r}: expected k1, k2 or k3")
