"""The real SmolLM2 learns two-digit addition on one GPU, trainer and engine sharing the card, with each engine.

The run is ``rlstack bench gpu-grpo``'s (``recipes/grpo_arith_smollm2_gpu.yaml``: the shape
TRL's ``GRPOTrainer`` was measured at, 64 prompts x 8 samples, 64 new tokens, 60 steps),
so one run gives both the verdict and the figures (printed as the bench's JSON line).
TRL reached held-out greedy 0.92 and sampled 0.89; each engine here must reach 0.90 on
both. The model comes to the GPU machine as ``../shared/device/README.md`` describes.
"""

import pytest

from rlstack.bench.gpu_grpo import run_engine

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


@pytest.mark.parametrize("engine", ["lmdeploy", "vllm"])
def test_the_real_model_samples_distinct_groups_and_learns_two_digit_addition(engine, ray_cluster, tmp_path):
    figures = run_engine(engine, [], tmp_path)
    assert figures["identical_group_fraction_step_1"] < 0.25  # a group of 8 samples at T=1 is not 8 copies
    assert figures["steps_trained"] >= 50
    assert figures["greedy_after"] >= 0.90
    assert figures["sampled_after"] >= 0.90
