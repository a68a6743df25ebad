"""float32 against bfloat16 matmuls on this CPU, and what ``auto`` picks

A SmolLM2 MLP projection's forward and backward in float32 and in bfloat16 on this CPU, side by side, and the
dtype that ``auto`` picks here.

Shapes: ``[1024, 576] @ [576, 1536]``, 6 * 1024 * 576 * 1536 FLOP per forward and backward.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rlstack.bench.result import record_result
from rlstack.hardware import resolve_dtype

TOKENS, HIDDEN, INTERMEDIATE = 1024, 576, 1536


def gflops(dtype: torch.dtype, rounds: int) -> float:
    """Median GFLOP/s of ``rounds`` forward-and-backward passes, after one warm-up pass."""
    x = torch.randn(TOKENS, HIDDEN, dtype=dtype, requires_grad=True)
    w = torch.randn(INTERMEDIATE, HIDDEN, dtype=dtype, requires_grad=True)
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        F.linear(x, w).sum().backward()
        times.append(time.perf_counter() - start)
    return 6 * TOKENS * HIDDEN * INTERMEDIATE / statistics.median(times[1:]) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench dtype", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("docs/results/dtype_cpu.json"))
    args = parser.parse_args(argv)
    float32, bfloat16 = gflops(torch.float32, args.rounds), gflops(torch.bfloat16, args.rounds)
    auto = resolve_dtype("auto", "cpu")
    figures = {
        "float32_gflops": round(float32, 2),
        "bfloat16_gflops": round(bfloat16, 2),
        "bfloat16_over_float32": round(bfloat16 / float32, 3),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_picks": auto,
    }
    faster = "bfloat16" if bfloat16 > float32 else "float32"
    record_result("dtype", figures, {"auto_picks_the_faster": auto == faster}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
