"""LMDeploy's PyTorch engine as a rollout engine (GPU only).

Two executors (``rollout.lmdeploy_executor``):

- ``uni``: the model runs in this actor's process, on the actor's GPU. Each decode step
  is a call in the process, not a Ray round trip to a worker, which made generation 2.4x
  faster on an H100 (26k against 11k tok/s, random 135 M model). LMDeploy's ``uni``
  executor has no ``update_params``, so buckets go to its model agent directly; it starts
  from the weights in the model directory (a ``random:`` model has none: use ``ray``).
- ``ray``: the pipeline starts empty (``empty_init``) and its Ray workers take their GPUs
  from the rollout actor's placement group; buckets go through ``update_params``. Needed
  for tensor parallelism.

Weights arrive one bucket per call, the last one with ``finished=True``. Each bucket is
one flat GPU tensor plus its layout (``load_format="flattened_bucket"``), sent as CUDA IPC
handles: on the H100 this loads a 1 B model at 29.6 GiB/s against 17.0 GiB/s for
per-tensor handles (docs/results/lmdeploy_sync_h100.json). A bucket is either already
serialized, by the trainer on the same node (``rollout.weight_transport=cuda_ipc``), or
plain tensors from the object store, which this actor moves to its GPU and serializes
itself (``ray``) or loads itself (``uni``: a process cannot open its own IPC handles).

LMDeploy reports raw logprobs (before temperature and top-p), so recipes that train on
its logprobs sample at temperature 1 without top-p; the recipe schema enforces it.

Colocated with the trainer on one GPU, the engine may sleep while the trainer works
(``rollout.sleep_while_training``): level 2 frees weights and KV cache; a sync wakes the
weights, loads them, then wakes the KV cache, which re-captures every CUDA graph. Awake,
an update loads in place (``param.data.copy_``), so the captured graphs read the new
weights.
"""

import asyncio
import random
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from rlstack import models
from rlstack.types import Completion, SamplingParams
from rollout.base import Engine

Bucket = dict[str, torch.Tensor] | str
"""Tensors to send, or a bucket already serialized by ``serialize_flattened``."""


def serialize_flattened(tensors: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """GPU ``tensors`` copied into one flat tensor, serialized with their layout as CUDA IPC handles for
    ``update_params(load_format="flattened_bucket")``. Returns the string and the flat tensor, which must
    stay alive until the engine has loaded it."""
    from lmdeploy.utils import FlattenedTensorBucket, serialize_state_dict

    bucket = FlattenedTensorBucket(named_tensors=list(tensors.items()))
    flat = bucket.get_flattened_tensor()
    return serialize_state_dict({"metadata": bucket.get_metadata(), "flattened_tensor": flat}), flat


def sample_seeds(seed: int, count: int) -> list[int]:
    """``count`` distinct seeds drawn from ``seed``: one random stream per request, so a prompt's ``n`` samples
    differ (one ``random_seed`` for all of them gives ``n`` copies of one completion)."""
    return random.Random(seed).sample(range(2**31), count)


def generation_config(params: SamplingParams, seed: int) -> Any:
    """LMDeploy's ``GenerationConfig`` for one sample of ``params``, drawn with ``seed`` (``n`` samples are ``n``
    requests, each with a seed of its own)."""
    from lmdeploy import GenerationConfig

    greedy = params.temperature == 0
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not greedy,
        temperature=1.0 if greedy else params.temperature,
        top_p=params.top_p,
        top_k=0,
        stop_words=list(params.stop) or None,
        include_stop_str_in_output=True,
        logprobs=1,
        random_seed=seed,
    )


def expand_requests(prompts: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Each prompt ``n`` times in a row: LMDeploy samples one response per request."""
    return [list(p) for p in prompts for _ in range(n)]


def sampled_logprobs(token_ids: Sequence[int], logprobs: Sequence[dict[int, float]] | None) -> tuple[float, ...]:
    """The logprob of each sampled token from LMDeploy's per-position ``{token: logprob}``."""
    if logprobs is None or len(logprobs) != len(token_ids):
        raise RuntimeError(f"LMDeploy returned {len(logprobs or [])} logprob rows for {len(token_ids)} tokens")
    return tuple(float(row[token]) for token, row in zip(token_ids, logprobs, strict=True))


class LMDeployEngine(Engine):
    """``lmdeploy.pipeline`` with the PyTorch engine behind the engine interface."""

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        tensor_parallel_size: int = 1,
        max_model_len: int = 2048,
        cache_fraction: float = 0.5,
        timeout_s: float | None = None,
        executor: Literal["ray", "uni"] = "ray",
    ):
        from lmdeploy import PytorchEngineConfig, pipeline

        config = PytorchEngineConfig(
            tp=tensor_parallel_size,
            dtype=str(dtype).removeprefix("torch."),
            session_len=max_model_len,
            cache_max_entry_count=cache_fraction,
            distributed_executor_backend=executor,
            empty_init=executor == "ray",
            logprobs_mode="raw_logprobs",
        )
        self.pipe = pipeline(models.engine_dir(model_path), backend_config=config, log_level="ERROR")
        self.engine = self.pipe.async_engine
        self.executor = executor
        self.tokenizer = models.load_tokenizer(model_path)
        self.timeout_s = timeout_s
        self.asleep = executor == "ray"  # empty_init: placeholder weights, no KV cache until the first sync
        self.weights_freed = False  # only sleep level 2 frees them
        self.policy_version = -1

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.policy_version < 0 or self.asleep:
            raise RuntimeError("engine has no weights from the trainer yet, or sleeps; call load_weights first")
        requests = expand_requests(prompts, params.n)
        configs = [generation_config(params, seed) for seed in sample_seeds(params.seed, len(requests))]
        responses = self._run(self._all(requests, configs))
        completions = [self._completion(r) for r in responses]
        return [completions[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    async def _all(self, requests: list[list[int]], configs: list[Any]) -> list[Any]:
        return await asyncio.gather(*(self._one(ids, config) for ids, config in zip(requests, configs, strict=True)))

    async def _one(self, input_ids: list[int], config: Any) -> Any:
        """One request through the async engine: ``preprocess`` on token ids, then the whole response."""
        request = await self.engine.preprocess(
            None, session_id=self.engine.session_mgr.get(), gen_config=config, input_ids=input_ids
        )
        response = None
        async for out in self.engine.generate(request, stream_response=False):
            part = out.to_response()
            response = part if response is None else response.extend(part)
        if response is None or response.finish_reason == "error":
            raise RuntimeError(f"LMDeploy request failed: {getattr(response, 'error_message', 'no response')}")
        return response

    def _run(self, coroutine: Any) -> Any:
        """Run on the pipeline's own event loop thread, where its engine lives."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.pipe.internal_thread.loop)
        return future.result(timeout=self.timeout_s)

    def _completion(self, response: Any) -> Completion:
        ids = tuple(response.token_ids)
        finish: Literal["stop", "length"] = "length" if response.finish_reason == "length" else "stop"
        return Completion(ids, sampled_logprobs(ids, response.logprobs), finish, self.policy_version, response.text)

    def close(self) -> None:
        """Stop the pipeline and its Ray workers, giving their GPUs back."""
        self.pipe.close()

    def sleep(self) -> None:
        """Free weights and KV cache (level 2) while the trainer uses the GPU."""
        if not self.asleep:
            self._run(self.engine.sleep(level=2))
            self.asleep = self.weights_freed = True

    def load_weights(self, version: int, buckets: Iterable[Bucket]) -> None:
        """Wake freed weights, send every bucket through ``update_params``, then wake the KV cache if asleep."""
        self.policy_version = -1
        if self.weights_freed:
            self.engine.wakeup(["weights"])
            self.weights_freed = False
        pending: Bucket | None = None  # held back one bucket, to send the last with finished=True
        for bucket in buckets:
            if pending is not None:
                self._update(pending, finished=False)
            pending = bucket
        if pending is None:
            raise RuntimeError(f"weight sync to version {version} carried no buckets")
        self._update(pending, finished=True)
        self.engine.complete_weights_update()
        if self.asleep:
            self.engine.wakeup(["kv_cache"])
            self.asleep = False
        self.policy_version = version

    def _update(self, bucket: Bucket, finished: bool) -> None:
        """Load one bucket: IPC handles through ``update_params``, tensors of this actor loaded in place (``uni``)
        or serialized for the workers (``ray``)."""
        from lmdeploy.serve.openai.protocol import UpdateParamsRequest

        if self.executor == "uni" and not isinstance(bucket, str):
            self._load_in_process(on_gpu(bucket), finished)
            return
        # the flat tensor behind the handles stays referenced until update_params has copied it
        serialized, _flat = (bucket, None) if isinstance(bucket, str) else serialize_flattened(on_gpu(bucket))
        request = UpdateParamsRequest(
            serialized_named_tensors=serialized, load_format="flattened_bucket", finished=finished
        )
        if self.executor == "uni":
            self.engine.engine.executor.model_agent.update_params(request)
        else:
            self.engine.engine.update_params(request)

    def _load_in_process(self, tensors: dict[str, torch.Tensor], finished: bool) -> None:
        """What ``update_params`` does with a bucket, for tensors already in this process."""
        from lmdeploy.pytorch.weight_loader.model_weight_loader import (
            ModelWeightLoader,
            process_weights_after_loading,
        )

        agent = self.engine.engine.executor.model_agent
        with agent.all_context():
            model = agent.patched_model.get_model()
            model.load_weights(ModelWeightLoader._rename_weights_iterator(iter(tensors.items()), model))
            if finished:
                process_weights_after_loading(model)
                torch.cuda.synchronize()


def on_gpu(bucket: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to("cuda", non_blocking=True) for name, tensor in bucket.items()}
