"""Where a GRPO step's time goes on a GPU: wall against GPU busy time, mask building, kernels by kind

One trainer rank in this process (no Ray between driver and rank, so nothing but the step
is timed): a random-init preset takes GRPO steps on the trainer bench's batch (64
sequences of up to 512 tokens, unshared prompts), then one step runs under
``torch.profiler``. The GPU's kernel time is split into matmuls, attention, the
optimizer, copies and casts, and the rest; what the wall time holds beyond the kernels is
host work (Python, launches, FSDP's hooks) during which the GPU waits.
"""

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from actors.trainer import TrainerWorker
from rlstack.bench.result import record_result
from rlstack.bench.trainer import RECIPE, common_overrides, grpo_samples, model_flops_utilization
from rlstack.config import load_recipe
from rlstack.data.shared_prompt import collate_shared_prompt, shared_prompt_rows
from rlstack.types import Completion, Sample, TrainBatch

KINDS = {
    "matmul": ("gemm", "nvjet", "cutlass", "sm90_xmma", "aten::mm"),
    "attention": ("flex_attention", "flash", "attention"),
    "optimizer": ("adam", "multi_tensor"),
    "copy_and_cast": ("copy", "memcpy", "chunk_cat", "cast"),
}
"""Kernel kinds, by parts of the kernel's name (the first kind that matches wins; the rest is ``other``)."""


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, parts in KINDS.items() if any(p in name for p in parts)), "other")


def on_policy_batch(worker: TrainerWorker, num_seqs: int, max_len: int) -> tuple[TrainBatch, int]:
    """The bench's GRPO batch with the policy's own logprobs as the old ones, and its token count."""
    samples = grpo_samples(num_seqs, max_len // 2, max_len // 2, seed=4)
    logprobs = worker.logprobs(samples, "grpo")
    samples = [
        Sample(s.prompt_ids, Completion(s.completion.token_ids, tuple(lp), "length", 0, ""), s.advantage)
        for s, lp in zip(samples, logprobs, strict=True)
    ]
    responses = [len(s.completion.token_ids) for s in samples]
    batch = TrainBatch(tuple(samples), sum(responses), len(samples), max(responses))
    return batch, sum(len(s.prompt_ids) for s in samples) + sum(responses)


def timed(fn: Any) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench trainer-profile", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-1b")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--num-steps", type=int, default=3, help="timed steps after the first (which compiles)")
    parser.add_argument("--output", type=Path, default=Path("docs/results/trainer_profile_cuda.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("rlstack bench trainer-profile profiles a GPU step; this machine has none", file=sys.stderr)
        return 2
    recipe = load_recipe(RECIPE, [*common_overrides("cuda", args.preset), *args.set])
    worker = TrainerWorker(recipe, 0, 1)
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    worker.setup("127.0.0.1", port)
    batch, tokens = on_policy_batch(worker, 64, 512)
    first = timed(lambda: worker.step(batch))
    steps = sorted(timed(lambda: worker.step(batch)) for _ in range(args.num_steps))
    step_s = steps[len(steps) // 2]
    rows = [
        collate_shared_prompt(r, 0) for r in shared_prompt_rows(list(batch.samples), recipe.trainer.micro_batch_tokens)
    ]
    mask_s = sum(timed(lambda r=r: r.attention_mask("cuda", recipe.trainer.attention)) for r in rows)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        profiled_s = timed(lambda: worker.step(batch))
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.self_device_time_total > 0:
            kind = kind_of(event.key)
            by_kind[kind] = by_kind.get(kind, 0.0) + event.self_device_time_total / 1e6
    gpu_s = sum(by_kind.values())
    tok_s = tokens / step_s
    figures = {
        "preset": args.preset,
        "overrides": args.set,
        "attention": recipe.trainer.attention,
        "compile": recipe.trainer.compile,
        "tokens_per_step": tokens,
        "num_rows": len(rows),
        "first_step_s": round(first, 3),
        "median_step_s": round(step_s, 3),
        "tok_s": round(tok_s, 1),
        "mfu": model_flops_utilization(tok_s, args.preset, torch.cuda.get_device_name()),
        "mask_building_s": round(mask_s, 4),
        "profiled_step_s": round(profiled_s, 3),
        "gpu_kernels_s": round(gpu_s, 3),
        "gpu_busy_fraction": round(gpu_s / profiled_s, 3),
        **{f"gpu_{kind}_s": round(seconds, 4) for kind, seconds in sorted(by_kind.items())},
    }
    record_result("trainer-profile", figures, {}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
