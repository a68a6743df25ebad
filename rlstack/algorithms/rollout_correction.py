"""Correction for the gap between the engine's and the trainer's logprobs: TIS and MIS.

The engine samples from ``mu`` (vLLM, LMDeploy or HF generate, with their own kernels and
precision); the trainer's logprobs of the same weights are ``pi_old``. The importance
ratio of a token is::

    rho_t = pi_old(y_t) / mu(y_t) = exp(trainer_logprobs_t - engine_logprobs_t)

and, with ``level="sequence"``, of a sequence ``rho_i = prod_t rho_t`` (the ratio of the
whole response's probabilities; it applies to each of the sequence's tokens). With
``cap > 1``::

    tis  w = min(rho, cap)                      truncated IS (Yao et al., "Your efficient RL
                                                framework secretly brings you off-policy RL
                                                training", https://fengyao.notion.site/off-policy-rl)
    mis  w = 1 if 1/cap <= rho <= cap else 0    masked IS: tokens (sequences) too far apart drop

Each token's policy loss is multiplied by ``w`` (no gradient). A dropped token still counts
in the loss's normaliser, so the scale of a step does not depend on how many were dropped.

Numerics: the statistics are computed in float64: k3 of a log-ratio ``x`` is about
``x^2 / 2``, and float32's ``exp(x) - 1 - x`` is 5% off at ``x = 1e-3`` and 3x off at
``1e-4``, where close engines are. Truncation and masking compare ``log rho`` with
``log cap``, so a sequence whose log-ratio sums to hundreds neither overflows nor
underflows into a wrong decision;
``min(log rho, log cap)`` is exponentiated, at most ``cap``. For the effective sample size
``log rho`` is clamped to [-10, 10] before ``exp``, as everywhere else.

Sums, not means, come back, so that micro-batches and ranks add up (``CORRECTION_SUMS``):
``mismatch_kl`` sums k3 of KL(mu || pi_old) over tokens, ``corrected`` counts the tokens
truncated (tis) or masked (mis), and ``ratio``, ``ratio_sq`` and ``units`` (tokens, or
sequences) give Kish's effective sample size of the raw ratios, ``effective_sample_size``.
"""

import math
from typing import Literal

import torch

from rlstack.algorithms.kl import kl_penalty

Correction = Literal["tis", "mis"]
CorrectionLevel = Literal["token", "sequence"]
CORRECTION_SUMS = ("mismatch_kl", "corrected", "ratio", "ratio_sq", "units")
"""The names of ``correction_weights``' sums, in a fixed order."""


def correction_weights(
    trainer_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: Correction,
    level: CorrectionLevel,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights of the policy loss, and this micro-batch's sums for the step's metrics.

    Args:
        trainer_logprobs: ``[B, T]`` the trainer's logprobs of the sampled tokens at the behaviour policy.
        engine_logprobs: ``[B, T]`` the engine's logprobs of the same tokens.
        mask: ``[B, T]`` float, 1 on response tokens.
        mode: ``tis`` or ``mis``.
        level: ``token`` (one ratio per token) or ``sequence`` (one per sequence, the product).
        cap: ``> 1``; TIS truncates at ``cap``, MIS keeps ``[1/cap, cap]``.

    Returns:
        ``weights: [B, T]`` (detached, 0 off the mask, in ``trainer_logprobs``' dtype) and float64 scalar sums
        named as ``CORRECTION_SUMS``.
    """
    dtype = trainer_logprobs.dtype
    trainer_logprobs, engine_logprobs = trainer_logprobs.detach().double(), engine_logprobs.detach().double()
    mask = mask.double()
    log_ratio = (trainer_logprobs - engine_logprobs) * mask  # [B, T]
    if level == "token":
        unit_log_ratio, unit_mask = log_ratio, mask  # [B, T]
    elif level == "sequence":
        unit_log_ratio = log_ratio.sum(-1, keepdim=True)  # [B, 1], log of the product of token ratios
        unit_mask = (mask.sum(-1, keepdim=True) > 0).to(mask.dtype)  # [B, 1], 0 for an all-padding sample
    else:
        raise ValueError(f"algorithm.correction_level={level!r}: expected token or sequence")
    log_cap = math.log(cap)
    if mode == "tis":
        weight = unit_log_ratio.clamp(max=log_cap).exp()
        corrected = unit_log_ratio > log_cap
    elif mode == "mis":
        kept = unit_log_ratio.abs() <= log_cap
        weight, corrected = kept.double(), ~kept
    else:
        raise ValueError(f"algorithm.rollout_correction={mode!r}: expected none, tis or mis")
    ratio = unit_log_ratio.clamp(-10.0, 10.0).exp() * unit_mask  # [B, T] or [B, 1]
    sums = {
        "mismatch_kl": (kl_penalty(engine_logprobs, trainer_logprobs, "k3") * mask).sum(),
        "corrected": (corrected.expand_as(mask) * mask).sum(),
        "ratio": ratio.sum(),
        "ratio_sq": ratio.square().sum(),
        "units": unit_mask.sum(),
    }
    return (weight.expand_as(mask) * mask).to(dtype), sums


def effective_sample_size(ratio: float, ratio_sq: float, units: float) -> float:
    """Kish's effective sample size as a share of the sample, ``(sum rho)^2 / (N * sum rho^2)``, in (0, 1].

    1 when every ratio is equal (engine and trainer agree); near ``1/N`` when one unit holds all the weight.
    ``ratio``, ``ratio_sq`` and ``units`` are ``correction_weights``' sums over the whole batch.
    """
    return ratio**2 / max(units * ratio_sq, 1e-30)  # 0, not a division by zero, for a batch of no tokens
