"""Build the engine a recipe names."""

import torch

from rlstack.config import Recipe
from rollout.base import Engine


def make_engine(recipe: Recipe) -> Engine:
    dtype = getattr(torch, recipe.rollout.dtype)
    if recipe.rollout.engine == "hf":
        from rollout.hf_engine import HFEngine

        return HFEngine(recipe.model.path, dtype=dtype, device=recipe.placement.device, seed=recipe.model.seed)
    if recipe.rollout.engine == "vllm":
        from rollout.vllm_engine import VLLMEngine

        rollout = recipe.rollout
        return VLLMEngine(
            recipe.model.path,
            dtype=dtype,
            device=recipe.placement.device,
            seed=recipe.model.seed,
            max_model_len=rollout.max_model_len,
            kv_cache_gb=rollout.kv_cache_gb,
            block_size=rollout.block_size,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            enforce_eager=rollout.enforce_eager,
            timeout_s=rollout.timeout_s,
            lora_rank=recipe.model.lora.rank if recipe.model.lora and rollout.lora_sync == "adapter" else None,
        )
    if recipe.rollout.engine == "lmdeploy":
        from rollout.lmdeploy_engine import LMDeployEngine

        return LMDeployEngine(
            recipe.model.path,
            dtype=dtype,
            tensor_parallel_size=recipe.rollout.tensor_parallel_size,
            max_model_len=recipe.rollout.max_model_len,
            cache_fraction=recipe.rollout.gpu_memory_utilization,
            timeout_s=recipe.rollout.timeout_s,
            executor="uni" if recipe.rollout.lmdeploy_executor == "uni" else "ray",
        )
    raise ValueError(f"rollout.engine={recipe.rollout.engine!r}: unknown engine")


def pack_bucket(engine: str, bucket: dict[str, torch.Tensor]) -> tuple[object, torch.Tensor]:
    """A bucket of GPU tensors in the form ``engine`` opens over CUDA IPC: what to send, and the tensor that
    must stay alive until the engine has loaded it (LMDeploy: a flattened bucket, serialized; vLLM: a
    ``SharedBucket`` of views)."""
    if engine == "lmdeploy":
        from rollout.lmdeploy_engine import serialize_flattened

        return serialize_flattened(bucket)
    from rollout.shared_bucket import share

    return share(bucket)
