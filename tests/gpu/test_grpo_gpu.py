"""GRPO on one GPU: an NCCL FSDP2 trainer rank and an HF engine colocated on the same device."""

import pytest
import torch

from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.data.batching import shard
from rlstack.types import Sample, SamplingParams
from tests.engines import fingerprints, policy_versions

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

GPU_OVERRIDES = [
    "model.path=random:smollm2-135m",
    "placement.device=cuda",
    "placement.num_trainer_ranks=1",
    "placement.trainer_gpus=0.5",
    "placement.rollout_gpus=0.5",
    "placement.num_threads=4",
    "rollout.dtype=bfloat16",
    "trainer.compute_dtype=bfloat16",
    "tracking.wandb=disabled",
]


def test_two_grpo_steps_on_one_gpu_with_nccl(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            *GPU_OVERRIDES,
            "rollout.dtype=float32",  # so that engine and trainer weights can be compared exactly
            f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:batched_length]",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        initial = controller.trainer.fingerprint()
        summary = controller.run()
        trained = controller.trainer.fingerprint()
        engine = fingerprints(controller.rollout)[0]
        versions = policy_versions(controller.rollout)
    assert sum(trained[k] != initial[k] for k in initial) > len(initial) // 2
    assert engine == trained
    assert versions == [2] == [summary["policy_version"]]


def test_trainer_and_engine_logprobs_agree_on_gpu(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [*GPU_OVERRIDES, "rollout.dtype=float32", "trainer.compute_dtype=float32", "algorithm.kl_coef=0"],
    )
    with GRPOController(recipe, tmp_path / "parity") as controller:
        controller.sync_weights()
        prompts = [controller.prompt_ids(p) for p in controller.sampler.next_batch(8)]
        groups = controller.rollout.generate(prompts, SamplingParams(n=4, max_new_tokens=16, seed=3))
        samples = [Sample(tuple(p), c, 0.0) for p, g in zip(prompts, groups, strict=True) for c in g]
        [trainer] = controller.trainer.logprobs(shard(samples, 1))
        step = controller.train(samples)  # its logprobs come from shared-prompt rows
    engine = torch.tensor([lp for s in samples for lp in s.completion.logprobs])
    ours = torch.tensor([lp for row in trainer for lp in row])
    mean_abs_diff = (engine - ours).abs().mean().item()
    print(f"trainer/engine logprob mean |diff| on GPU (fp32): {mean_abs_diff:.2e} padded, "
          f"{step['logprob_mismatch']:.2e} in the train step")  # fmt: skip
    assert mean_abs_diff < 1e-3
    assert step["logprob_mismatch"] < 1e-3
