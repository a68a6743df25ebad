"""Which compute dtype is fast where a run's trainer and engines run."""

import functools


@functools.cache
def fast_bf16(device: str) -> bool:
    """True on CUDA, and on CPUs with native bf16 kernels in oneDNN (AVX-512 or AMX). An AVX2-only CPU
    emulates bf16: its matmuls run 5 to 50 times slower than float32 ones."""
    if device == "cuda":
        return True
    import torch

    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_dtype(name: str, device: str) -> str:
    """``auto`` becomes ``bfloat16`` where it is fast on ``device``, else ``float32``; other names stay."""
    if name != "auto":
        return name
    return "bfloat16" if fast_bf16(device) else "float32"
