"""seconds to sync SmolLM2 into vLLM, against a plain copy

The weights are the embedded SmolLM2 in the engine's dtype (bfloat16, about 270 MB),
in ``rollout.bucket_mb`` buckets. Measured side by side in one run, each the median of
``--rounds``:

- ``trainer_gather_s``: the trainer gathers its FSDP2 shards and puts the buckets into
  the Ray object store;
- ``engine_load_s``: the engine actor fetches every bucket and loads it through vLLM's
  weight-transfer API (layerwise reload, prefix cache reset): the sync into the engine;
- ``full_sync_s``: both, as the controller runs them each step;
- ``plain_copy_s``: the same buckets fetched in this process and copied into
  preallocated tensors, the floor any loader pays.

Then an engine in this process loads the same buckets while a thread samples the
process's resident memory: ``engine_peak_extra_mb`` is the peak above the level before
the sync, with the buckets already in memory (the real path holds one fetched bucket at
a time on top of it).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import ray
import torch

from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.memory import ResidentGrowth
from rollout.vllm_engine import VLLMEngine

RECIPE = "recipes/grpo_arith_smollm2.yaml"


def median_seconds(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench sync", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("docs/results/sync_cpu.json"))
    args = parser.parse_args(argv)
    recipe = load_recipe(RECIPE, ["rollout.engine=vllm", "tracking.wandb=disabled", "tracking.console=false"])
    rollout = recipe.rollout
    ray.init(include_dashboard=False, runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git"]})
    try:
        with GRPOController(recipe, Path("runs/bench-sync") / time.strftime("%Y%m%d-%H%M%S")) as controller:
            assert controller.rollout is not None
            engines = controller.rollout
            refs = controller.trainer.state_dict_buckets(rollout.bucket_mb, rollout.dtype)
            buckets = [ray.get(ref) for ref in refs]
            num_bytes = sum(t.numel() * t.element_size() for b in buckets for t in b.values())
            targets = [{name: torch.empty_like(t) for name, t in b.items()} for b in buckets]

            def plain_copy() -> None:
                for ref, target in zip(refs, targets, strict=True):
                    for name, tensor in ray.get(ref).items():
                        target[name].copy_(tensor)

            version = iter(range(1, 10_000))
            gather = median_seconds(
                lambda: controller.trainer.state_dict_buckets(rollout.bucket_mb, rollout.dtype), args.rounds
            )
            load = median_seconds(lambda: engines.update_weights(next(version), refs), args.rounds)
            copy = median_seconds(plain_copy, args.rounds)

            def full_sync() -> None:
                controller.policy_version += 1
                controller.sync_weights()

            full = median_seconds(full_sync, args.rounds)
    finally:
        ray.shutdown()
    engine = VLLMEngine(
        recipe.model.path, dtype=getattr(torch, rollout.dtype), device="cpu", max_model_len=rollout.max_model_len
    )
    engine.load_weights(0, buckets)
    with ResidentGrowth() as resident:
        engine.load_weights(1, buckets)
    figures = {
        "weights": f"SmolLM2-135M, {rollout.dtype}, {len(buckets)} buckets, rollout.bucket_mb={rollout.bucket_mb}",
        "megabytes": round(num_bytes / 1e6, 1),
        "rounds": args.rounds,
        "trainer_gather_s": round(gather, 3),
        "engine_load_s": round(load, 3),
        "full_sync_s": round(full, 3),
        "plain_copy_s": round(copy, 3),
        "engine_load_over_plain_copy": round(load / copy, 2),
        "largest_bucket_mb": round(max(sum(t.nbytes for t in b.values()) for b in buckets) / 1e6, 1),
        "engine_peak_extra_mb": round(resident.peak_bytes / 1e6, 1),
    }
    record_result("sync", figures, {"engine_load_s<=1.0": load <= 1.0}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
