"""A fixed-seed tiny GRPO, SFT and DPO run logs the metrics recorded in ``tests/assets/fixed_seed_metrics.json``.

The trainer's structure (one loop, injected objectives) may change; its numbers may not.
The file was written by ``fixed_seed_metrics`` from the code before the trainer became
one loop with objectives; a change that alters the numbers on purpose rewrites it
(``python -m tests.e2e.test_fixed_seed_metrics``) and says why.
"""

import json
import math
from pathlib import Path

import pytest
import ray

from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.dpo import DPOController
from rlstack.sft import SFTController

pytestmark = pytest.mark.e2e

GOLDEN = Path(__file__).parents[1] / "assets" / "fixed_seed_metrics.json"
RECIPE = Path(__file__).parents[2] / "recipes" / "grpo_tiny_random.yaml"
REWARD = Path(__file__).parents[1] / "assets" / "rewards.py"
RUNS = {
    "grpo": (GRPOController, [f"reward.functions=[{REWARD}:batched_length]"]),
    "sft": (SFTController, ["algorithm.name=sft", "algorithm.kl_coef=0", "algorithm.batch_size=8"]),
    "dpo": (DPOController, ["algorithm.name=dpo", "algorithm.reference=online", "algorithm.batch_size=8"]),
}
COMMON = ["trainer.num_steps=2", "eval.every_steps=0", "checkpoint.at_end=false", "rollout.dtype=float32"]


def fixed_seed_metrics(algorithm: str, run_dir: Path) -> list[dict[str, float]]:
    """Each step's numeric metrics, without times and throughputs (which vary from run to run)."""
    controller_type, overrides = RUNS[algorithm]
    recipe = load_recipe(RECIPE, [*overrides, *COMMON])
    with controller_type(recipe, run_dir) as controller:
        controller.run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {
            k: v
            for k, v in r.items()
            if isinstance(v, float | int) and k != "time" and not k.startswith(("time/", "throughput/"))
        }
        for r in records
    ]


@pytest.mark.parametrize("algorithm", list(RUNS))
def test_a_fixed_seed_run_logs_the_recorded_metrics(algorithm, ray_cluster, tmp_path):
    expected = json.loads(GOLDEN.read_text())[algorithm]
    actual = fixed_seed_metrics(algorithm, tmp_path / "run")
    assert [sorted(r) for r in actual] == [sorted(r) for r in expected]
    for got, want in zip(actual, expected, strict=True):
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=1e-7), (got["step"], key, got[key], value)


if __name__ == "__main__":
    import tempfile

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    with tempfile.TemporaryDirectory() as tmp:
        golden = {name: fixed_seed_metrics(name, Path(tmp) / name) for name in RUNS}
    ray.shutdown()
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
