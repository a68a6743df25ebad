"""``rlstack bench demo``: run the demo and record its figures against the issue's targets.

Writes ``docs/results/grpo_demo_cpu.json`` and ends with one JSON line of the figures.
"""

import argparse
import sys
from pathlib import Path

from rlstack.bench_result import record_result
from rlstack.demo import run_demo

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
    figures = run_demo("recipes/grpo_arith_smollm2.yaml", [], Path("runs"), args.setup_seconds)
    command = "make bench" if args.setup_seconds else "rlstack bench demo"  # make times the setup
    record_result("grpo_demo", command, figures, check_targets(figures), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
