"""Two GRPO steps through all three groups on a real local Ray, with a tiny random model."""

import json
import shutil

import pytest

from rlstack.checkpoint import continued
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.data.batching import shard
from rlstack.types import Sample, SamplingParams
from tests.engines import fingerprints, policy_versions

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_two_grpo_steps_update_trainer_and_engine_to_the_same_version(ray_cluster, tmp_path, request, transport):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:distinct_characters]",
            f"tracking.run_root={tmp_path}",
            "tracking.name=run",
            "rollout.dtype=float32",
            f"rollout.weight_transport={transport}",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        initial = controller.trainer.fingerprint()
        assert fingerprints(controller.rollout)[0] == initial  # same seed, same random init
        summary = controller.run()
        trainer_weights = controller.trainer.fingerprint()
        engine_weights = fingerprints(controller.rollout)[0]
        versions = policy_versions(controller.rollout)
    changed = [name for name in initial if trainer_weights[name] != initial[name]]
    assert len(changed) > len(initial) // 2
    assert engine_weights == trainer_weights
    assert versions == [2] == [summary["policy_version"]]

    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("time/generate", "time/reward", "time/train", "time/sync", "grad_norm", "entropy", "kl", "lr"):
        assert all(key in r for r in steps), key
    assert steps[0]["grad_norm"] > 0
    evaluations = [r for r in records if "eval/greedy_accuracy" in r]
    assert [r["step"] for r in evaluations] == [0, 2]
    assert all(r["time/eval"] > 0 for r in evaluations)
    assert (tmp_path / "run/plot.png").stat().st_size > 0
    checkpoint = tmp_path / "run/checkpoints/step_2"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "trainer_state.pt"):
        assert (checkpoint / name).is_file(), name


def test_trainer_logprobs_match_the_engine(ray_cluster, tmp_path, request):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        ["rollout.dtype=float32", "tracking.wandb=disabled", "algorithm.kl_coef=0"],
    )
    with GRPOController(recipe, tmp_path / "parity") as controller:
        controller.sync_weights()
        prompts = [controller.prompt_ids(p) for p in controller.sampler.next_batch(4)]
        groups = controller.rollout.generate(prompts, SamplingParams(n=2, max_new_tokens=8, temperature=1.0, seed=5))
        samples = [Sample(tuple(p), c, 0.0) for p, g in zip(prompts, groups, strict=True) for c in g]
        shards = shard(samples, recipe.placement.num_trainer_ranks)
        trainer = controller.trainer.logprobs(shards)
    for part, logprobs in zip(shards, trainer, strict=True):
        for sample, row in zip(part, logprobs, strict=True):
            assert row == pytest.approx(list(sample.completion.logprobs), abs=1e-4)


@pytest.mark.slow
def test_resuming_from_a_checkpoint_continues_exactly(ray_cluster, tmp_path, request):
    recipe_file = request.config.rootpath / "recipes/grpo_tiny_random.yaml"
    common = [
        f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:distinct_characters]",
        f"tracking.run_root={tmp_path}",
        "tracking.wandb=disabled",
        "rollout.dtype=float32",
        "trainer.num_steps=3",
        "checkpoint.every_steps=1",
    ]
    store = f"file://{tmp_path}/store"  # a checkpoint URI, as s3://... would be
    with GRPOController(load_recipe(recipe_file, [*common, f"checkpoint.uri={store}"]), tmp_path / "straight") as c:
        c.run()
        straight = c.trainer.fingerprint()
    assert not (tmp_path / "straight/checkpoints").exists()
    resumed_recipe = load_recipe(recipe_file, [*common, f"checkpoint.resume_from={store}/step_1"])
    with GRPOController(resumed_recipe, tmp_path / "resumed") as controller:
        summary = controller.run()
        resumed = controller.trainer.fingerprint()
    assert resumed == straight
    assert summary["policy_version"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and 2 in steps and 1 not in steps[1:]

    # the straight run, cut short: step 3 never written, step 2 torn; re-submitted under its own name
    shutil.rmtree(tmp_path / "store/step_3")
    (tmp_path / "store/step_2/trainer_state.pt").write_bytes(b"")
    again = load_recipe(recipe_file, [*common, f"checkpoint.uri={store}", "checkpoint.auto_resume=true"])
    again = continued(again, tmp_path / "straight")
    assert again.checkpoint.resume_from == f"{store}/step_1"
    with GRPOController(again, tmp_path / "straight") as controller:
        controller.run()
        assert controller.trainer.fingerprint() == straight
