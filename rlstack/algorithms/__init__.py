"""Pure tensor functions: advantages, policy losses, KL estimators. No Ray, no FSDP, no I/O."""

from rlstack.algorithms.advantages import group_advantages
from rlstack.algorithms.kl import kl_penalty
from rlstack.algorithms.logprobs import at_temperature, chunked_token_logprobs, token_entropy, token_logprobs
from rlstack.algorithms.policy_loss import aggregate, clipped_surrogate

__all__ = [
    "aggregate",
    "at_temperature",
    "chunked_token_logprobs",
    "clipped_surrogate",
    "group_advantages",
    "kl_penalty",
    "token_entropy",
    "token_logprobs",
]
