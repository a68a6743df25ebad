"""Pure tensor functions: advantages, policy losses, KL estimators, rollout correction. No Ray, no FSDP, no I/O."""

from rlstack.algorithms.advantages import group_advantages
from rlstack.algorithms.kl import kl_penalty
from rlstack.algorithms.logprobs import at_temperature, chunked_token_logprobs, token_entropy, token_logprobs
from rlstack.algorithms.policy_loss import aggregate, clipped_surrogate
from rlstack.algorithms.rollout_correction import CORRECTION_SUMS, correction_weights, effective_sample_size

__all__ = [
    "CORRECTION_SUMS",
    "aggregate",
    "at_temperature",
    "chunked_token_logprobs",
    "clipped_surrogate",
    "correction_weights",
    "effective_sample_size",
    "group_advantages",
    "kl_penalty",
    "token_entropy",
    "token_logprobs",
]
