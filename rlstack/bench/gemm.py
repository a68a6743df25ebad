"""a decode step's matmuls: vLLM's oneDNN kernel against torch's

The embedded model's matrix multiplies at one decode step's batch on this CPU, through vLLM's oneDNN kernel
and through ``torch.nn.functional.linear``, side by side.

A decode step of ``M`` sequences multiplies ``[M, K]`` activations by each layer's
weights (``N x K``), in vLLM's fused layout: qkv, o, gate_up and down per decoder layer,
then the LM head. Its forward pass costs about
``num_layers * (qkv + o + gate_up + down) + lm_head``; each multiply is ``2 * M * N * K`` FLOP.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import load_recipe

RECIPE = "recipes/grpo_arith_smollm2.yaml"


def decode_matmuls(model_path: str) -> dict[str, tuple[int, int, int]]:
    """``{name: (N, K, calls per forward pass)}``: each decoder layer's fused projections, and the LM head."""
    config = AutoConfig.from_pretrained(models.engine_dir(model_path))
    hidden, layers = config.hidden_size, config.num_hidden_layers
    qkv = (config.num_attention_heads + 2 * config.num_key_value_heads) * (hidden // config.num_attention_heads)
    return {
        "qkv": (qkv, hidden, layers),
        "o": (hidden, hidden, layers),
        "gate_up": (2 * config.intermediate_size, hidden, layers),
        "down": (hidden, config.intermediate_size, layers),
        "lm_head": (config.vocab_size, hidden, 1),
    }


def median_ms(matmul: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls, after one warm-up call."""
    matmul()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench gemm", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=Path("docs/results/gemm_cpu.json"))
    args = parser.parse_args(argv)
    from vllm import _custom_ops as ops

    recipe = load_recipe(RECIPE, ["rollout.engine=vllm"])
    rows = recipe.rollout.num_prompts * recipe.rollout.num_samples
    torch.set_num_threads(recipe.placement.num_threads or torch.get_num_threads())
    figures: dict[str, object] = {"rows": rows, "dtype": "float32", "threads": torch.get_num_threads()}
    forward_ms = {"onednn": 0.0, "torch": 0.0}
    for name, (n, k, count) in decode_matmuls(recipe.model.path).items():
        weight, x = torch.randn(n, k), torch.randn(rows, k)
        handler = ops.create_onednn_mm(weight.t(), 32)
        kernels = {"onednn": partial(ops.onednn_mm, handler, x, None), "torch": partial(F.linear, x, weight)}
        for kernel, matmul in kernels.items():
            ms = median_ms(matmul, args.repeats)
            forward_ms[kernel] += count * ms
            figures[f"{name}_{kernel}_ms"] = round(ms, 2)
            figures[f"{name}_{kernel}_gflops"] = round(2 * rows * n * k / ms / 1e6, 1)
            print(f"{name} [{rows}, {k}] x [{k}, {n}] {kernel}: {ms:.2f} ms", flush=True)
    figures["forward_onednn_ms"] = round(forward_ms["onednn"], 1)
    figures["forward_torch_ms"] = round(forward_ms["torch"], 1)
    figures["onednn_over_torch_speedup"] = round(forward_ms["torch"] / forward_ms["onednn"], 2)
    record_result(
        "gemm",
        figures,
        {"onednn_faster": forward_ms["onednn"] < forward_ms["torch"]},
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
