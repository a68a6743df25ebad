"""The DeepSpeed config rlstack generates from a recipe, and the recipe checks of the DeepSpeed backend."""

import importlib.util

import pytest

from actors.deepspeed_backend import deepspeed_config
from rlstack.config import RecipeError, load_recipe

RECIPE = "recipes/grpo_tiny_random.yaml"


def test_the_config_follows_the_recipe():
    recipe = load_recipe(
        RECIPE,
        ["trainer.backend=deepspeed", "trainer.compute_dtype=bfloat16", "trainer.max_grad_norm=0.5"],
    )
    config = deepspeed_config(recipe)
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": True}
    assert config["gradient_clipping"] == 0.5
    assert (config["gradient_accumulation_steps"], config["managed_gradient_accumulation"]) == (1, False)


def test_offload_and_the_passthrough_merge_key_by_key():
    recipe = load_recipe(
        RECIPE,
        [
            "trainer.deepspeed.zero_stage=3",
            "trainer.deepspeed.offload_optimizer=true",
            "trainer.deepspeed.offload_params=true",
            "trainer.deepspeed.config={zero_optimization: {stage3_max_live_parameters: 1000}, "
            "wall_clock_breakdown: true}",
        ],
    )
    zero = deepspeed_config(recipe)["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_max_live_parameters"] == 1000
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert deepspeed_config(recipe)["wall_clock_breakdown"] is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.deepspeed.offload_params=true", "offload_params needs trainer.deepspeed.zero_stage=3, not 2"),
        ("trainer.deepspeed.config={gradient_accumulation_steps: 4}", "config sets gradient_accumulation_steps"),
        ("trainer.deepspeed.zero_stage=4", "zero_stage"),
    ],
)
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(RECIPE, ["trainer.backend=deepspeed", override])


def test_deepspeed_missing_names_the_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(RecipeError, match=r"needs DeepSpeed: pip install -e '\.\[deepspeed\]'"):
        load_recipe(RECIPE, ["trainer.backend=deepspeed"])
    load_recipe(RECIPE, ["trainer.backend=fsdp2"])
