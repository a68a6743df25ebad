"""the demo, its figures written to docs/results/

Runs the demo with each rollout engine and records the figures against the targets.

The recipe's own engine (vLLM) runs first, then the same recipe with the HF engine, one
after the other in one command. Writes ``docs/results/grpo_demo_cpu.json`` and ends with
one JSON line of the figures: the vLLM run's, plus the HF run's under ``hf_``.
"""

import argparse
import sys
from pathlib import Path

from rlstack.bench.result import record_result
from rlstack.demo import run_demo

RECIPE = "recipes/grpo_arith_smollm2.yaml"

TARGETS = {
    "sampled_accuracy_after": (">=", 0.80),
    "greedy_accuracy_after": (">=", 0.95),
    "wall_s": ("<=", 20 * 60),
    "peak_memory_gib": ("<=", 8.0),
}


def check_targets(figures: dict) -> dict[str, bool]:
    return {key: figures[key] >= bound if op == ">=" else figures[key] <= bound for key, (op, bound) in TARGETS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench demo", description=__doc__.splitlines()[0])
    parser.add_argument("--setup-seconds", type=float, default=0.0)
    parser.add_argument("--output", type=Path, default=Path("docs/results/grpo_demo_cpu.json"))
    args = parser.parse_args(argv)
    figures = run_demo(RECIPE, ["rollout.engine=vllm"], Path("runs"), args.setup_seconds)
    hf = run_demo(RECIPE, ["rollout.engine=hf"], Path("runs"), 0.0)
    figures |= {f"hf_{key}": value for key, value in hf.items() if key not in ("steps", "setup_s")}
    figures["vllm_over_hf_wall"] = round(figures["wall_s"] / hf["wall_s"], 3)
    targets = check_targets(figures) | {
        "vllm_over_hf_wall<=0.6": figures["vllm_over_hf_wall"] <= 0.6,
        "vllm_accuracy>=hf": figures["greedy_accuracy_after"] >= hf["greedy_accuracy_after"]
        and figures["sampled_accuracy_after"] >= hf["sampled_accuracy_after"],
    }
    record_result("grpo_demo", figures, targets, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
