"""LoRA through the whole loop: real Ray, two FSDP2 ranks, a tiny random model with an adapter."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from actors.trainer import TrainerGroup
from rlstack import models
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.dpo import DPOController
from rlstack.lora import ADAPTER_DIR, ADAPTER_FILE
from rlstack.sft import SFTController
from rlstack.types import SamplingParams
from rollout.hf_engine import HFEngine
from tests.engines import policy_versions

pytestmark = pytest.mark.e2e

LORA = ["model.lora={rank: 4, alpha: 8}", "rollout.dtype=float32", "trainer.lr=1e-2", "tracking.wandb=disabled"]
SHORT = ["trainer.num_steps=3", "algorithm.batch_size=8", "data.num_eval=6", "rollout.max_new_tokens=4",
         "eval.num_samples=1"]  # fmt: skip


def checkpoint_model(checkpoint) -> HFEngine:
    """An HF engine serving the checkpoint through PEFT: its base weights with ``adapter/`` loaded, unmerged."""
    engine = HFEngine("random:tiny", dtype=torch.float32, device="cpu")
    base = models.load_model(str(checkpoint))
    engine.model = PeftModel.from_pretrained(base, checkpoint / ADAPTER_DIR).eval()
    engine.policy_version = 0
    return engine


@pytest.mark.parametrize("lora_sync", ["merged", "adapter"])
def test_lora_grpo_trains_the_adapter_alone_and_the_engine_serves_the_trained_model(
    ray_cluster, tmp_path, request, lora_sync
):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:distinct_characters]",
            f"tracking.run_root={tmp_path}",
            "tracking.name=run",
            f"rollout.lora_sync={lora_sync}",
            *LORA,
        ],
    )
    assert recipe.algorithm.kl_coef > 0  # the reference is the policy with its adapter off
    with GRPOController(recipe, tmp_path / "run") as controller:
        initial = controller.trainer.fingerprint()
        summary = controller.run()
        trained = controller.trainer.fingerprint()
        prompts = [controller.prompt_ids(p) for p in controller.held_out_prompts]
        greedy = SamplingParams(n=1, max_new_tokens=8, temperature=0.0)
        served = controller.rollout.generate(prompts, greedy)
        versions = policy_versions(controller.rollout)
    adapter_names = [name for name in initial if ".lora_" in name]
    assert adapter_names and all(trained[n] == initial[n] for n in initial if ".lora_" not in n)
    assert any(trained[n] != initial[n] for n in adapter_names if ".lora_B." in n)
    assert versions == [2] == [summary["policy_version"]]
    steps = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert next(r["kl"] for r in steps if "kl" in r) == 0.0  # B starts at 0: the first policy is the reference
    assert any(r.get("kl", 0.0) > 0 for r in steps)

    checkpoint = tmp_path / "run/checkpoints/step_2"
    manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
    assert {f"{ADAPTER_DIR}/{ADAPTER_FILE}", f"{ADAPTER_DIR}/adapter_config.json"} <= set(manifest)
    base = load_file(checkpoint / "model.safetensors")
    assert not [name for name in base if "lora_" in name or "base_layer" in name]
    reference = checkpoint_model(checkpoint).generate(prompts, greedy)
    assert [c.token_ids for g in served for c in g] == [c.token_ids for g in reference for c in g]
    for ours, theirs in zip(served, reference, strict=True):
        assert ours[0].logprobs == pytest.approx(theirs[0].logprobs, abs=1e-4)
    untrained = HFEngine("random:tiny", dtype=torch.float32, device="cpu")
    untrained.policy_version = 0
    before = untrained.generate(prompts, greedy)
    gap = max(
        abs(x - y)
        for b, a in zip(before, served, strict=True)
        for x, y in zip(b[0].logprobs, a[0].logprobs, strict=False)
    )
    assert gap > 1e-3  # the synced adapter changed what the engine serves


def test_lora_sft_lowers_held_out_loss_with_the_base_weights_frozen_and_resumes_from_its_checkpoint(
    ray_cluster, tmp_path, request
):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [*LORA, *SHORT, "algorithm.name=sft", "algorithm.kl_coef=0"],
    )
    with SFTController(recipe, tmp_path / "run") as controller:
        initial = controller.trainer.fingerprint()
        summary = controller.run()
        trained = controller.trainer.fingerprint()
    assert summary["loss_after"] < summary["loss_before"]
    assert all(trained[n] == initial[n] for n in initial if ".lora_" not in n)
    checkpoint = tmp_path / "run/checkpoints/step_3"
    assert (checkpoint / ADAPTER_DIR / ADAPTER_FILE).is_file()
    group = TrainerGroup(recipe)
    try:
        group.load(str(checkpoint))
        assert group.fingerprint() == trained  # base weights and adapter, back from the checkpoint
    finally:
        group.shutdown()


def test_lora_online_dpo_starts_at_its_reference_and_raises_the_margin(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [*LORA, *SHORT, "algorithm.name=dpo", "algorithm.reference=online", "algorithm.beta=0.5"],
    )
    with DPOController(recipe, tmp_path / "run") as controller:
        controller.run()
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "rewards/accuracy" in r]
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0): adapter off is the policy at B = 0
    assert steps[-1]["rewards/margin"] > 0 and steps[-1]["loss"] < steps[0]["loss"]
