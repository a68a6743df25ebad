"""The engine interface every rollout backend implements."""

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch

from rlstack.types import Completion, SamplingParams


class Engine(Protocol):
    """An inference engine hosting one copy of the policy.

    ``policy_version`` is -1 until the first weight sync; an engine refuses to generate
    before then, so it only ever serves complete versions pushed by the trainer. Engines
    whose weights live in this process (HF, vLLM) also have ``fingerprint()``, the sum of
    each parameter, to compare weights across processes; LMDeploy's live in its workers.
    """

    policy_version: int

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (token ids), in prompt order."""
        ...

    def load_weights(self, version: int, buckets: Iterable[dict[str, torch.Tensor]]) -> None:
        """Install a full set of weights, bucket by bucket, then start serving ``version``."""
        ...
