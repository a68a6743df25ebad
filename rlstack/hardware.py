"""Which compute dtype is fast where a run's trainer and engines run, and what a GPU can compute at most."""

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


BF16_DENSE_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "B200": 2250e12,
}
"""Dense bf16 tensor-core peak (FLOP/s, no sparsity) of known cards, by a part of their CUDA name; the first
name found in the card's name wins, so ``H100 PCIe`` precedes ``H100``."""


def bf16_peak_flops(card: str) -> tuple[str, float] | None:
    """``(table entry, peak FLOP/s)`` of the card named ``card``, or ``None`` for a card not in the table."""
    for name, peak in BF16_DENSE_PEAK_FLOPS.items():
        if name in card:
            return name, peak
    return None
