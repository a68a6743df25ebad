"""DeepSpeed ZeRO as the trainer backend on real Ray, on DeepSpeed's CPU accelerator (gloo): the same steps
as FSDP2, weight sync from partitioned parameters, checkpoints that resume exactly, and an export that
seeds FSDP2."""

import pytest

from actors.trainer import TrainerGroup
from rlstack.bench.trainer import BACKENDS, three_steps
from rlstack.cli import main as rlstack_main
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from tests.engines import fingerprints

pytestmark = pytest.mark.e2e

TWO_RANKS_FP32 = [
    "placement.num_trainer_ranks=2",
    "trainer.compute_dtype=float32",
    "trainer.lr=1e-3",
    "algorithm.kl_coef=0",
    "tracking.wandb=disabled",
]


@pytest.fixture(scope="module")
def fsdp2_steps(ray_cluster, request):
    recipe_file = request.config.rootpath / "recipes/grpo_tiny_random.yaml"
    return three_steps(load_recipe(recipe_file, [*TWO_RANKS_FP32, *BACKENDS["fsdp2"]]))


@pytest.mark.parametrize("backend", ["zero1", "zero2", "zero3"])
def test_grpo_sft_and_dpo_steps_equal_fsdp2s(ray_cluster, request, fsdp2_steps, backend):
    """Same init, same batches, two ranks in float32: losses and gradient norms agree to reduction order."""
    recipe_file = request.config.rootpath / "recipes/grpo_tiny_random.yaml"
    ours = three_steps(load_recipe(recipe_file, [*TWO_RANKS_FP32, *BACKENDS[backend]]))
    assert ours.keys() == fsdp2_steps.keys()
    for key, value in fsdp2_steps.items():
        assert ours[key] == pytest.approx(value, rel=1e-4), key
    assert ours["grpo_grad_norm"] > 0 and ours["sft_grad_norm"] > 0 and ours["dpo_grad_norm"] > 0


@pytest.mark.slow
def test_zero3_trains_syncs_resumes_exactly_and_its_export_seeds_fsdp2(ray_cluster, tmp_path, request):
    recipe_file = request.config.rootpath / "recipes/grpo_tiny_random.yaml"
    common = [
        f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:distinct_characters]",
        f"tracking.run_root={tmp_path}",
        "tracking.wandb=disabled",
        "rollout.dtype=float32",
        "trainer.num_steps=2",
        "checkpoint.every_steps=1",
        "trainer.backend=deepspeed",
        "trainer.deepspeed.zero_stage=3",
    ]
    with GRPOController(load_recipe(recipe_file, common), tmp_path / "straight") as controller:
        initial = controller.trainer.fingerprint()
        controller.run()
        straight = controller.trainer.fingerprint()
        engine = fingerprints(controller.rollout)[0]
    assert engine == straight  # the engine got the gathered ZeRO-3 parameters
    assert sum(straight[name] != initial[name] for name in initial) > len(initial) // 2
    step_1 = tmp_path / "straight/checkpoints/step_1"
    assert (step_1 / "model.safetensors").is_file() and (step_1 / "deepspeed/zero").is_dir()

    resumed_recipe = load_recipe(recipe_file, [*common, f"checkpoint.resume_from={step_1}"])
    with GRPOController(resumed_recipe, tmp_path / "resumed") as controller:
        controller.run()
        resumed = controller.trainer.fingerprint()
    assert resumed == pytest.approx(straight, rel=1e-6)

    export_dir = tmp_path / "export"
    assert rlstack_main(["export", str(tmp_path / "straight/checkpoints/step_2"), str(export_dir)]) == 0
    fsdp2 = TrainerGroup(load_recipe(recipe_file, [f"model.path={export_dir}", "algorithm.kl_coef=0"]))
    try:
        assert fsdp2.fingerprint() == pytest.approx(straight, rel=1e-6)
    finally:
        fsdp2.shutdown()
