"""reward-pool throughput and the cost of a hung call

Side by side in one run on a local Ray:
- a trivial reward (``exact_match``) called in-process in a loop, and the same samples
  through the RewardPool; the difference per sample is the pool's overhead;
- a reward that never returns, with a 1 s timeout: the whole ``score`` call's time
  minus the timeout is what a hung function costs a step.

Writes ``docs/results/reward_pool_cpu.json`` and ends with one JSON line of the figures.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import ray

from actors.reward import RewardPool, ScoreRequest
from reward.arithmetic import exact_match
from rlstack.bench.result import record_result
from rlstack.config import PlacementSection, RewardFunction, RewardSection

HUNG = "tests/assets/rewards.py:sleeps_forever"


def measure(num_samples: int, num_workers: int, timeout_s: float) -> dict:
    requests = [ScoreRequest(str(i % 10), "What is 2 + 2?", {"answer": 4}, 1, "stop") for i in range(num_samples)]
    start = time.perf_counter()
    for r in requests:
        exact_match(r.completion, prompt=r.prompt, **r.row)
    in_process_s = time.perf_counter() - start

    placement = PlacementSection(num_reward_workers=num_workers, reward_cpus=0.1)
    pool = RewardPool(RewardSection(functions=[RewardFunction(fn="exact_match")]), placement)
    pool.score(requests[:100])  # warm-up: actors started, function imported
    start = time.perf_counter()
    scores = pool.score(requests)
    pool_s = time.perf_counter() - start
    assert scores.num_errors == 0 and sum(scores.rewards) == num_samples // 10
    pool.shutdown()

    hung = RewardPool(RewardSection(functions=[RewardFunction(fn=HUNG)], timeout_s=timeout_s), placement)
    hung.score(requests[:2])
    start = time.perf_counter()
    result = hung.score(requests[:64])
    hung_s = time.perf_counter() - start
    assert result.num_errors == 64
    hung.shutdown()
    return {
        "num_samples": num_samples,
        "num_workers": num_workers,
        "pool_samples_per_s": round(num_samples / pool_s),
        "in_process_samples_per_s": round(num_samples / in_process_s),
        "overhead_us_per_sample": round((pool_s - in_process_s) / num_samples * 1e6, 1),
        "hung_call_timeout_s": timeout_s,
        "hung_call_step_s": round(hung_s, 3),
        "hung_call_cost_over_timeout_s": round(hung_s - timeout_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench reward", description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=20000)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=Path("docs/results/reward_pool_cpu.json"))
    args = parser.parse_args(argv)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git"]},
    )
    try:
        figures = measure(args.num_samples, args.num_workers, args.timeout_s)
    finally:
        ray.shutdown()
    targets_met = {
        "pool_samples_per_s>=5000": figures["pool_samples_per_s"] >= 5000,
        "hung_call_cost<=0.5s": figures["hung_call_cost_over_timeout_s"] <= 0.5,
    }
    record_result("reward_pool", figures, targets_met, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
