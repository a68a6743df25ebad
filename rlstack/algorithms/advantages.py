"""Group-relative advantages (GRPO, https://arxiv.org/abs/2402.03300, eq. 3).

For a group of ``n`` samples of one prompt with rewards ``r_1..r_n``::

    A_i = r_i - mean(r)                      (Dr.GRPO, https://arxiv.org/abs/2503.20783)
    A_i = (r_i - mean(r)) / (std(r) + eps)   (GRPO, normalize_std=True)

``std`` is the unbiased sample std (``torch.std``), as in the GRPO reference code.
"""

import torch


def group_advantages(
    rewards: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages for grouped rewards.

    Args:
        rewards: ``[G, n]``, one row per prompt, one column per sample.
        normalize_std: divide by the group std (GRPO) or not (Dr.GRPO).
        eps: keeps a zero-variance group finite; its advantages are exactly 0.

    Returns:
        ``advantages: [G, n]`` and metrics: the fraction of groups whose rewards are all equal.
    """
    mean = rewards.mean(dim=1, keepdim=True)  # [G, 1]
    advantages = rewards - mean
    if normalize_std:
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + eps)
    zero_variance = zero_variance_groups(rewards)  # [G]
    return advantages, {"zero_variance_fraction": zero_variance.float().mean().item()}


def zero_variance_groups(rewards: torch.Tensor) -> torch.Tensor:
    """``[G]`` bool: groups whose rewards ``[G, n]`` are all equal, which carry no learning signal."""
    return (rewards == rewards[:, :1]).all(dim=1)
