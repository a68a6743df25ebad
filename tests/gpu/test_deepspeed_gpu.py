"""DeepSpeed ZeRO-2 and ZeRO-3 against FSDP2 on one GPU: the same GRPO, SFT and DPO steps in bfloat16."""

import json

import pytest

from rlstack.bench.trainer import BACKENDS, RECIPE, common_overrides, three_steps
from rlstack.config import load_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

LOSS_BOUND = 0.02
"""Relative difference of each loss from FSDP2's: bf16 compute, FSDP2 reducing gradients in fp32, DeepSpeed in bf16."""
GRAD_NORM_BOUND = 0.05


def test_zero2_and_zero3_take_the_same_steps_as_fsdp2(ray_cluster, request):
    recipe_file = request.config.rootpath / RECIPE
    results = {
        backend: three_steps(load_recipe(recipe_file, [*common_overrides("cuda", "smollm2-135m"), *BACKENDS[backend]]))
        for backend in ("fsdp2", "zero2", "zero3")
    }
    print("step figures by backend (bf16, random:smollm2-135m):", json.dumps(results))
    for backend in ("zero2", "zero3"):
        for name in ("grpo", "sft", "dpo"):
            assert results[backend][f"{name}_loss"] == pytest.approx(results["fsdp2"][f"{name}_loss"], rel=LOSS_BOUND)
            assert results[backend][f"{name}_grad_norm"] == pytest.approx(
                results["fsdp2"][f"{name}_grad_norm"], rel=GRAD_NORM_BOUND
            )
