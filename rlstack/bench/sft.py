"""SFT tokens/s with 1 and 2 FSDP2 ranks, and packing efficiency

Throughput is real (unpadded) tokens per second of the trainer's SFT ``step`` on the embedded SmolLM2,
with the same total CPU threads for both rank counts, measured side by side in one run.
Packing efficiency is measured on the built-in arithmetic sets three ways: real tokens
over the tokens the model processes (packed rows are never padded), over packs padded to
the full budget (first-fit-decreasing), and, for comparison, over right-padded
micro-batches without packing.
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import ray

from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.data.batching import micro_batches, response_sample
from rlstack.data.packing import collate_packed, pack, packing_efficiency
from rlstack.data.supervised import load_sft_data
from rlstack.sft import SFTController

RECIPE = "recipes/sft_arith_smollm2.yaml"


def throughput(num_ranks: int, num_steps: int, run_root: Path) -> float:
    """Mean real tokens/s of ``num_steps`` SFT steps after one warm-up step."""
    total_threads = os.cpu_count() or 2
    recipe = load_recipe(
        RECIPE,
        [
            "data.digits=2",
            "algorithm.batch_size=32",
            f"placement.num_trainer_ranks={num_ranks}",
            f"placement.trainer_cpus={1 / num_ranks}",
            f"placement.num_threads={max(1, total_threads // num_ranks)}",
            "tracking.wandb=disabled",
            "tracking.console=false",
            f"tracking.run_root={run_root}",
        ],
    )
    tokenizer = models.load_tokenizer(recipe.model.path)
    data = dataclasses.replace(load_sft_data(recipe.data, tokenizer), held_out_prompts=[])  # no engines needed
    with SFTController(recipe, run_root / f"ranks{num_ranks}", data) as controller:
        controller.step(1)
        rates = [controller.step(step)["throughput/train_tok_s"] for step in range(2, num_steps + 2)]
    return sum(rates) / len(rates)


def packing_figures(budget: int) -> dict[str, float]:
    recipe = load_recipe(RECIPE)
    tokenizer = models.load_tokenizer("random:tiny")  # same tokenizer files as the embedded model
    figures: dict[str, float] = {}
    for digits in (1, 2):
        examples = load_sft_data(recipe.data.model_copy(update={"digits": digits}), tokenizer).train
        packs = pack([len(e.input_ids) for e in examples], budget)
        real = sum(len(e.input_ids) for e in examples)
        processed = sum(
            collate_packed([examples[i] for i in p], 0, sum(len(examples[i].input_ids) for i in p)).input_ids.numel()
            for p in packs
        )
        samples = [response_sample((), e.input_ids) for e in examples]
        padded = sum(
            len(group) * max(len(s.completion.token_ids) for s in group) for group in micro_batches(samples, budget)
        )
        figures |= {
            f"digits{digits}_num_examples": len(examples),
            f"digits{digits}_num_packs": len(packs),
            f"digits{digits}_processed_efficiency": round(real / processed, 4),
            f"digits{digits}_budget_fill": round(packing_efficiency(examples, packs, budget), 4),
            f"digits{digits}_unpacked_padded_efficiency": round(real / padded, 4),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench sft", description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=4)
    parser.add_argument("--run-root", type=Path, default=Path("runs/bench-sft"))
    parser.add_argument("--output", type=Path, default=Path("docs/results/sft_cpu.json"))
    args = parser.parse_args(argv)
    models.resolve("smollm2")
    run_root = args.run_root / time.strftime("%Y%m%d-%H%M%S")
    ray.init(include_dashboard=False, runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git"]})
    try:
        one, two = (throughput(n, args.num_steps, run_root) for n in (1, 2))
    finally:
        ray.shutdown()
    figures = {
        "sft_tok_s_1_rank": round(one, 1),
        "sft_tok_s_2_ranks": round(two, 1),
        "two_over_one_rank": round(two / one, 3),
        **packing_figures(load_recipe(RECIPE).trainer.micro_batch_tokens),
    }
    targets_met = {
        "processed_efficiency>=0.95": figures["digits1_processed_efficiency"] >= 0.95,
        "budget_fill_2digit_set>=0.95": figures["digits2_budget_fill"] >= 0.95,
    }
    record_result("sft", figures, targets_met, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
