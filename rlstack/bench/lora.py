"""GRPO with a LoRA adapter against full fine-tuning, on the CPU: accuracy, step time, memory, sync bytes

Both arms train the embedded SmolLM2-135M-Instruct on the demo task with vLLM, one after the
other in one command: ``recipes/grpo_arith_smollm2_lora.yaml`` (rank-16 adapter on every
linear layer, merged weight sync) and the full fine-tune it departs from,
``recipes/grpo_arith_smollm2.yaml``, with the same ``--num-steps`` and held-out prompts.
Figures, under ``lora_`` and ``full_``:

- held-out greedy and sampled accuracy before and after (the controller's own evaluation);
- median seconds of a step and of its update (``time/step``, ``time/train``) and of its sync;
- ``trainer_peak_rss_gib``: the trainer rank's peak resident memory over the run (its
  ``ru_maxrss``), where LoRA saves the full weights' gradients and AdamW state;
- bytes one sync sends: the merged weights in ``rollout.dtype`` (what ``lora_sync=merged`` and
  a full fine-tune send) and the adapter alone (``lora_sync=adapter``), with the seconds the
  trainer takes to build each.

The machine's load average is recorded with them: on a shared machine step times say more
about the neighbours than about the code. The LoRA arm's figures are written as soon as it
ends, so a bench cut short during the full fine-tune keeps them.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray

from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.controller import GRPOController

LORA_RECIPE = "recipes/grpo_arith_smollm2_lora.yaml"
FULL_RECIPE = "recipes/grpo_arith_smollm2.yaml"


def peak_rss_gib(worker: Any) -> float:
    """The peak resident memory of an actor's process, in GiB (Linux reports ``ru_maxrss`` in KiB)."""
    kib = ray.get(worker.__ray_call__.remote(lambda _: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    return round(kib / 2**20, 3)


def bucket_bytes(refs: list[ray.ObjectRef]) -> int:
    return sum(t.nbytes for ref in refs for t in ray.get(ref).values())


def timed_bytes(build: Any) -> tuple[int, float]:
    """The bytes of the buckets ``build()`` returns, and the seconds it took."""
    start = time.perf_counter()
    refs = build()
    return bucket_bytes(refs), round(time.perf_counter() - start, 3)


def run_arm(recipe_path: str, overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Train one arm through the controller; its figures, unprefixed."""
    recipe = load_recipe(recipe_path, overrides)
    with GRPOController(recipe, run_dir) as controller:
        summary = controller.run()
        peak = peak_rss_gib(controller.trainer.workers[0])
        rollout = recipe.rollout
        merged, merged_s = timed_bytes(lambda: controller.trainer.state_dict_buckets(rollout.bucket_mb, rollout.dtype))
        figures: dict[str, Any] = {"sync_bytes_merged": merged, "merged_buckets_s": merged_s}
        if recipe.model.lora is not None:
            adapter, adapter_s = timed_bytes(lambda: controller.trainer.adapter_buckets(rollout.dtype))
            figures |= {"sync_bytes_adapter": adapter, "adapter_buckets_s": adapter_s}
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "time/step" in r]
    median = {key: round(statistics.median(r[key] for r in steps), 2) for key in ("time/step", "time/train")}
    syncs = [r["time/sync"] for r in steps if "time/sync" in r]
    return {
        **{key: summary[key] for key in summary if key.endswith(("_before", "_after"))},
        "steps": summary["steps"],
        "median_step_s": median["time/step"],
        "median_train_s": median["time/train"],
        "median_sync_s": round(statistics.median(syncs), 3) if syncs else None,
        "wall_s": summary["wall_s"],
        "trainer_peak_rss_gib": peak,
        **figures,
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench lora", description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=12, help="steps of each arm (the recipes' 12 by default)")
    parser.add_argument("--num-eval", type=int, default=50, help="held-out prompts")
    parser.add_argument("--eval-every", type=int, default=4, help="held-out evaluation every k steps")
    parser.add_argument("--run-root", type=Path, default=Path("runs/bench-lora"))
    parser.add_argument("--output", type=Path, default=Path("docs/results/lora_cpu.json"))
    parser.add_argument("--override", action="append", default=[], help="a.b=value for both arms (tests)")
    args = parser.parse_args(argv)
    run_root = args.run_root / time.strftime("%Y%m%d-%H%M%S")
    common = [
        f"trainer.num_steps={args.num_steps}",
        f"data.num_eval={args.num_eval}",
        f"eval.every_steps={args.eval_every}",
        "checkpoint.at_end=false",
        "tracking.wandb=disabled",
        "tracking.console=off",
        f"tracking.run_root={run_root}",
        *args.override,
    ]
    load_before = round(os.getloadavg()[0], 1)
    ray.init(include_dashboard=False, runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git"]})
    try:
        lora = run_arm(LORA_RECIPE, common, run_root / "lora")
        learned = {"lora_greedy_accuracy_after>before": lora["greedy_accuracy_after"] > lora["greedy_accuracy_before"]}
        interim = {"recipes": {"lora": LORA_RECIPE}, **{f"lora_{key}": value for key, value in lora.items()}}
        record_result("lora", {**interim, "full": "not run yet: the bench was cut short"}, learned, args.output)
        full = run_arm(FULL_RECIPE, common, run_root / "full")
    finally:
        ray.shutdown()
    figures: dict[str, Any] = {
        "recipes": {"lora": LORA_RECIPE, "full": FULL_RECIPE},
        "load_average_1min": {"start": load_before, "end": round(os.getloadavg()[0], 1)},
        **{f"lora_{key}": value for key, value in lora.items()},
        **{f"full_{key}": value for key, value in full.items()},
    }
    figures["adapter_over_merged_bytes"] = round(lora["sync_bytes_adapter"] / lora["sync_bytes_merged"], 4)
    figures["lora_over_full_trainer_peak_rss"] = round(lora["trainer_peak_rss_gib"] / full["trainer_peak_rss_gib"], 3)
    figures["lora_over_full_median_train_s"] = round(lora["median_train_s"] / full["median_train_s"], 3)
    targets = {
        **learned,
        "adapter_bytes<=10%_of_merged": figures["adapter_over_merged_bytes"] <= 0.10,
        "lora_trainer_peak_rss<full": lora["trainer_peak_rss_gib"] < full["trainer_peak_rss_gib"],
    }
    record_result("lora", figures, targets, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
