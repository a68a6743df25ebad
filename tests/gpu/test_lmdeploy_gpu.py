"""LMDeploy's PyTorch engine on one GPU: generation, exact weight pushes, logprob parity, colocated GRPO."""

import json

import pytest
import torch

from rlstack import models
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.data.batching import shard
from rlstack.data.chat import render_prompt
from rlstack.types import Sample, SamplingParams
from tests.engines import policy_versions

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

MODEL = "random:smollm2-135m"
LMDEPLOY = [
    f"model.path={MODEL}",
    "rollout.engine=lmdeploy",
    "rollout.dtype=bfloat16",
    "rollout.gpu_memory_utilization=0.3",
    "placement.device=cuda",
    "placement.num_trainer_ranks=1",
    "placement.trainer_gpus=0.5",
    "placement.rollout_gpus=0.5",
    "placement.num_threads=4",
    "trainer.compute_dtype=bfloat16",
    "tracking.wandb=disabled",
]
PARITY_BOUND = 0.05
"""Mean |trainer - engine| logprob, both in bfloat16 (different kernels; fp32 is not offered by LMDeploy)."""


def weights(seed: int) -> dict[str, torch.Tensor]:
    model = models.load_model(MODEL, dtype=torch.bfloat16, seed=seed)
    return {name: param.detach() for name, param in model.named_parameters()}


def buckets(weights: dict[str, torch.Tensor], size: int = 50) -> list[dict[str, torch.Tensor]]:
    names = list(weights)
    return [{name: weights[name] for name in names[i : i + size]} for i in range(0, len(names), size)]


def tokens(groups: list) -> list[tuple[int, ...]]:
    return [group[0].token_ids for group in groups]


def test_generation_and_a_b_a_weight_pushes_are_exact(ray_cluster, request):
    from rollout.lmdeploy_engine import LMDeployEngine

    engine = LMDeployEngine(MODEL, torch.bfloat16, max_model_len=512, cache_fraction=0.3, timeout_s=300)
    request.addfinalizer(engine.close)
    tokenizer = models.load_tokenizer(MODEL)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"What is {i} + 1?"}]) for i in range(8)]
    greedy = SamplingParams(n=1, max_new_tokens=24, temperature=0.0)
    a, b = weights(0), weights(1)
    engine.load_weights(0, buckets(a))
    first = engine.generate(prompts, greedy)
    engine.load_weights(1, buckets(b))
    other = engine.generate(prompts, greedy)
    engine.load_weights(2, buckets(a))
    again = engine.generate(prompts, greedy)
    sampled = engine.generate(prompts[:2], SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=1))
    assert tokens(again) == tokens(first)
    assert tokens(other) != tokens(first)
    assert all(len(g) == 4 and all(len(c.logprobs) == len(c.token_ids) > 0 for c in g) for g in sampled)
    assert {c.policy_version for g in again for c in g} == {2}


def test_trainer_and_lmdeploy_logprobs_agree(ray_cluster, tmp_path, request):
    recipe = load_recipe(request.config.rootpath / "recipes/grpo_tiny_random.yaml", [*LMDEPLOY, "algorithm.kl_coef=0"])
    with GRPOController(recipe, tmp_path / "parity") as controller:
        controller.sync_weights()
        prompts = [controller.prompt_ids(p) for p in controller.sampler.next_batch(8)]
        groups = controller.rollout.generate(prompts, SamplingParams(n=4, max_new_tokens=16, seed=3))
        samples = [Sample(tuple(p), c, 0.0) for p, g in zip(prompts, groups, strict=True) for c in g]
        [trainer] = controller.trainer.logprobs(shard(samples, 1))
    engine = torch.tensor([lp for s in samples for lp in s.completion.logprobs])
    ours = torch.tensor([lp for row in trainer for lp in row])
    mean_abs_diff = (engine - ours).abs().mean().item()
    print(f"trainer/LMDeploy logprob mean |diff| (bf16, {len(ours)} tokens): {mean_abs_diff:.4f}")
    assert mean_abs_diff < PARITY_BOUND


def test_three_grpo_steps_colocated_with_cuda_ipc_and_sleep(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            *LMDEPLOY,
            "rollout.weight_transport=cuda_ipc",
            "rollout.sleep_while_training=true",
            "trainer.num_steps=3",
            f"tracking.run_root={tmp_path}",
            "tracking.name=run",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        summary = controller.run()
        versions = policy_versions(controller.rollout)
    assert versions == [3] == [summary["policy_version"]]
    steps = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "time/train" in s]
    assert len(steps) == 3 and all(s["time/sync"] > 0 for s in steps)
    print(
        "colocated GRPO step seconds:", [{k: round(v, 3) for k, v in s.items() if k.startswith("time/")} for s in steps]
    )
