"""The engine interface every rollout backend implements: every method the rollout actor calls."""

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from rlstack.types import Completion, SamplingParams


class Engine(ABC):
    """An inference engine hosting one copy of the policy.

    ``policy_version`` is -1 until the first weight sync; an engine refuses to generate
    before then, so it only ever serves complete versions pushed by the trainer.
    """

    policy_version: int

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt (token ids), in prompt order."""

    @abstractmethod
    def load_weights(self, version: int, buckets: Iterable[Any]) -> None:
        """Install a full set of weights, bucket by bucket (tensors by name, or the engine's own CUDA IPC form,
        ``rollout.registry.pack_bucket``), then start serving ``version``."""

    def load_adapter(self, version: int, adapter: dict[str, Any], scale: float) -> None:
        """Serve ``version``: the base weights with a LoRA adapter applied (tensors in PEFT's file format,
        ``rlstack.lora``; ``scale`` is ``alpha / rank``), replacing the previous version's adapter."""
        raise NotImplementedError(f"{type(self).__name__} loads no LoRA adapter; use rollout.lora_sync=merged")

    def sleep(self) -> None:
        """Free the engine's GPU memory until the next ``load_weights`` (LMDeploy; others cannot)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sleep")

    def fingerprint(self) -> dict[str, float]:
        """``{name: sum of the parameter}``, to compare weights across processes (engines whose weights live in
        this process: HF, vLLM)."""
        raise NotImplementedError(f"{type(self).__name__} keeps its weights in other processes")
