"""GRPO with the real SmolLM2 on one GPU, step time against TRL's

Runs ``recipes/grpo_arith_smollm2_gpu.yaml`` (two-digit addition, 64 prompts x 8 samples,
64 new tokens, 60 steps; trainer and engine share the GPU) once per engine named, and
writes ``docs/results/gpu_grpo_real_<card>_<engine>.json``: the median step and the
median of each phase (generate, reward, train, sync), held-out greedy and sampled
accuracy before and after, and how often the engine slept through an update. The peer is
TRL 1.16's ``GRPOTrainer`` at the same shape on an H200 (its default single-GPU mode, HF
``generate``, bf16): a median step of 1.40 s, held-out greedy 0.92 and sampled 0.89
(../FACTS.md of the project's shared notes; measured 2026-12-01). Targets: a median step
of at most half TRL's, with held-out sampled accuracy of at least 0.90.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import ray
import torch

from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.controller import GRPOController

RECIPE = "recipes/grpo_arith_smollm2_gpu.yaml"
TRL_STEP_S = 1.40
"""TRL 1.16 ``GRPOTrainer``'s median step at this shape on an H200."""
PHASES = ("generate", "reward", "train", "sync")


def card() -> str:
    """``h200`` for an ``NVIDIA H200``: the last word of the device name, lower case."""
    return torch.cuda.get_device_name().split()[-1].lower()


def summarise(records: list[dict], engine: str, executor: str) -> dict[str, object]:
    """The bench's figures from a run's ``metrics.jsonl`` records."""
    steps = [r for r in records if "time/step" in r]
    evals = [r for r in records if "eval/sampled_accuracy" in r]
    trained = [r for r in steps if "time/train" in r]
    median = {p: round(statistics.median(r[f"time/{p}"] for r in trained), 3) for p in PHASES}
    return {
        "engine": engine if engine != "lmdeploy" else f"lmdeploy ({executor} executor)",
        "num_steps": len(steps),
        "median_step_s": round(statistics.median(r["time/step"] for r in steps), 3),
        **{f"median_{p}_s": median[p] for p in PHASES},
        "over_trl": round(statistics.median(r["time/step"] for r in steps) / TRL_STEP_S, 3),
        "greedy_before": evals[0]["eval/greedy_accuracy"],
        "sampled_before": evals[0]["eval/sampled_accuracy"],
        "greedy_after": evals[-1]["eval/greedy_accuracy"],
        "sampled_after": evals[-1]["eval/sampled_accuracy"],
        "steps_trained": len(trained),
        "steps_engine_slept": sum(r.get("rollout/engine_slept", 0.0) == 1.0 for r in trained),
        "median_generate_tok_s": round(statistics.median(r["throughput/generate_tok_s"] for r in steps)),
        "identical_group_fraction_step_1": steps[0]["identical_group_fraction"],
        "peak_trainer_gib": round(max(r.get("memory/peak_gib", 0.0) for r in trained), 2),
        "notes": [r["note"] for r in records if "note" in r],
    }


def run_engine(engine: str, overrides: list[str], output_dir: Path, tag: str = "") -> dict[str, object]:
    """Train the recipe with ``engine`` in the Ray already started; write and return its figures."""
    vllm_memory = ["rollout.gpu_memory_utilization=0.2"] if engine == "vllm" else []
    recipe = load_recipe(RECIPE, [f"rollout.engine={engine}", *vllm_memory, *overrides])
    run_dir = Path("runs/bench-gpu-grpo") / f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}"
    with GRPOController(recipe, run_dir) as controller:
        controller.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    figures = summarise(records, engine, recipe.rollout.lmdeploy_executor)
    record_result(
        "gpu-grpo",
        {"workload": "two-digit addition, 64 prompts x 8 samples, 64 new tokens, real SmolLM2, bf16",
         "trl_median_step_s": TRL_STEP_S, "run_dir": str(run_dir), **figures},
        {
            "median_step<=0.5x_trl": figures["median_step_s"] <= 0.5 * TRL_STEP_S,  # type: ignore[operator]
            "sampled_after>=0.90": figures["sampled_after"] >= 0.90,  # type: ignore[operator]
        },
        output_dir / f"gpu_grpo_real_{card()}_{engine}{tag and '_' + tag}.json",
    )  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench gpu-grpo", description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["lmdeploy"], choices=["lmdeploy", "vllm"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--output-dir", type=Path, default=Path("docs/results"))
    parser.add_argument("--tag", default="", help="added to the result's file name, for runs with --set")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("rlstack bench gpu-grpo: needs a GPU", file=sys.stderr)
        return 2
    ray.init(include_dashboard=False)
    try:
        for engine in args.engines:
            run_engine(engine, args.set, args.output_dir, args.tag)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
