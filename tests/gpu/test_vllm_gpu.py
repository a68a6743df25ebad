"""vLLM on the GPU: GRPO with trainer/engine logprob parity, NCCL broadcast and CUDA IPC sync, exact A/B/A pushes."""

import json
from pathlib import Path

import pytest
import torch

from actors.weight_sync import WeightSync
from rlstack import models
from rlstack.config import Recipe, load_recipe
from rlstack.controller import GRPOController
from rlstack.data.chat import render_prompt
from rlstack.types import SamplingParams
from tests.engines import fingerprints, policy_versions

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

MODEL = "random:smollm2-135m"
VLLM = [
    f"model.path={MODEL}",
    "rollout.engine=vllm",
    "rollout.dtype=bfloat16",
    "rollout.gpu_memory_utilization=0.3",
    "rollout.max_model_len=512",
    "placement.device=cuda",
    "placement.num_trainer_ranks=1",
    "placement.num_threads=4",
    "trainer.compute_dtype=bfloat16",
    "algorithm.kl_coef=0",
    "tracking.wandb=disabled",
]
MISMATCH_BOUND = 0.05
"""Mean |trainer - engine| logprob over the first step's sampled tokens, both in bfloat16 (different kernels)."""
GREEDY = SamplingParams(n=1, max_new_tokens=16, temperature=0.0)


def weights(seed: int) -> dict[str, torch.Tensor]:
    model = models.load_model(MODEL, dtype=torch.bfloat16, seed=seed)
    return {name: param.detach() for name, param in model.named_parameters()}


def one_step_recipe(request: pytest.FixtureRequest, tmp_path: Path, *overrides: str) -> Recipe:
    """One GRPO step at a learning rate that visibly moves the weights, rewarded by a signal a random model earns."""
    root = request.config.rootpath
    return load_recipe(
        root / "recipes/grpo_tiny_random.yaml",
        [
            *VLLM,
            *overrides,
            "trainer.num_steps=1",
            "trainer.lr=1e-3",
            f"reward.functions=[{root}/tests/assets/rewards.py:distinct_characters]",
            f"tracking.run_root={tmp_path}",
            "tracking.name=run",
        ],
    )


def test_a_grpo_step_changes_the_engine_and_logs_a_small_logprob_mismatch(ray_cluster, tmp_path, request):
    recipe = one_step_recipe(request, tmp_path, "placement.trainer_gpus=0.5", "placement.rollout_gpus=0.5")
    with GRPOController(recipe, tmp_path / "run") as controller:
        controller.sync_weights()
        prompts = [controller.prompt_ids(p) for p in controller.held_out_prompts]
        before = controller.rollout.generate(prompts, GREEDY)
        summary = controller.run()
        after = controller.rollout.generate(prompts, GREEDY)
        versions = policy_versions(controller.rollout)
    assert versions == [1] == [summary["policy_version"]]
    assert {c.policy_version for g in after for c in g} == {1}
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    mismatch = next(r for r in records if "reward/mean" in r)["logprob_mismatch"]
    print(f"trainer/vLLM logprob mean |diff| at step 1 (bf16): {mismatch:.4f}")
    assert 0 < mismatch < MISMATCH_BOUND


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs trainer and engine on two GPUs")


@pytest.mark.parametrize(
    ("transport", "gpus_each"),
    [pytest.param("broadcast", 1, marks=TWO_GPUS, id="nccl-broadcast"), pytest.param("cuda_ipc", 0.5, id="cuda-ipc")],
)
def test_a_gpu_transport_delivers_the_same_weights_as_the_object_store(
    ray_cluster, tmp_path, request, transport, gpus_each
):
    placement = [f"placement.trainer_gpus={gpus_each}", f"placement.rollout_gpus={gpus_each}"]
    recipe = one_step_recipe(request, tmp_path, f"rollout.weight_transport={transport}", *placement)
    with GRPOController(recipe, tmp_path / "run") as controller:
        controller.sync_weights()
        initial = fingerprints(controller.rollout)[0]
        controller.run()  # trains, then syncs over the transport
        synced = fingerprints(controller.rollout)[0]
        object_store = recipe.rollout.model_copy(update={"weight_transport": "object_store"})
        WeightSync(controller.trainer, controller.rollout, object_store).push(2)
        fetched = fingerprints(controller.rollout)[0]
    assert synced == fetched
    assert sum(synced[name] != initial[name] for name in initial) > len(initial) // 2


def test_generation_and_a_b_a_weight_pushes_are_exact():
    from rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(MODEL, torch.bfloat16, "cuda", max_model_len=512, gpu_memory_utilization=0.3, timeout_s=300)
    tokenizer = models.load_tokenizer(MODEL)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"What is {i} + 1?"}]) for i in range(8)]
    a, b = (weights(seed) for seed in (0, 1))
    engine.load_weights(0, [a])
    first = engine.generate(prompts, GREEDY)
    engine.load_weights(1, [dict(list(b.items())[:40]), dict(list(b.items())[40:])])
    other = engine.generate(prompts, GREEDY)
    engine.load_weights(2, [a])
    again = engine.generate(prompts, GREEDY)
    sampled = engine.generate(prompts[:2], SamplingParams(n=4, max_new_tokens=16, temperature=1.0))
    assert [g[0].token_ids for g in again] == [g[0].token_ids for g in first]
    assert [g[0].logprobs for g in again] == [g[0].logprobs for g in first]
    assert [g[0].token_ids for g in other] != [g[0].token_ids for g in first]
    assert all(len(g) == 4 and all(len(c.logprobs) == len(c.token_ids) > 0 for c in g) for g in sampled)
    assert {c.policy_version for g in again for c in g} == {2}
