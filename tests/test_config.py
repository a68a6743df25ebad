from pathlib import Path

import pytest
from pydantic import BaseModel

from rlstack import hardware
from rlstack.config import Recipe, RecipeError, apply_override, load_recipe, parse_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
RECIPE = Path(__file__).parents[1] / "recipes" / "grpo_arith_smollm2.yaml"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    assert isinstance(load_recipe(path), Recipe)


def test_every_field_has_a_docstring():
    sections = [f.annotation for f in Recipe.model_fields.values() if isinstance(f.annotation, type)]
    sections = [s for s in sections if issubclass(s, BaseModel)]
    assert len(sections) == 10
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no docstring"


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"unknown key 'trainer\.lrr'; did you mean 'trainer\.lr'\?"):
        parse_recipe({"trainer": {"lrr": 1e-5}})


def test_unknown_section_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"'rollot'; did you mean 'rollout'"):
        parse_recipe({"rollot": {}})


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(RecipeError, match=r"trainer\.num_steps.*'many'"):
        parse_recipe({"trainer": {"num_steps": "many"}})


def test_group_of_one_sample_is_rejected():
    with pytest.raises(RecipeError, match=r"rollout\.num_samples=1"):
        parse_recipe({"rollout": {"num_samples": 1}})


def test_overrides_are_parsed_as_yaml(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("trainer:\n  lr: 1.0e-5\n")
    recipe = load_recipe(recipe_file, ["trainer.lr=2e-6", "algorithm.normalize_std=false", "trainer.num_steps=3"])
    assert recipe.trainer.lr == 2e-6
    assert recipe.algorithm.normalize_std is False
    assert recipe.trainer.num_steps == 3


def test_override_of_unknown_key_is_an_error(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("{}")
    with pytest.raises(RecipeError, match=r"did you mean 'trainer\.num_steps'"):
        load_recipe(recipe_file, ["trainer.num_step=3"])


def test_malformed_override_is_an_error():
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_override({}, "trainer.lr")


def test_missing_recipe_file_names_the_path(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("device", "fast", "expected"),
    [("cuda", False, "bfloat16"), ("cpu", True, "bfloat16"), ("cpu", False, "float32")],
)
def test_auto_dtypes_become_the_fast_one_for_the_device(monkeypatch, device, fast, expected):
    monkeypatch.setattr(hardware, "fast_bf16", lambda d: d == "cuda" or fast)
    overrides = ["rollout.engine=hf", "rollout.dtype=auto", "trainer.compute_dtype=auto", f"placement.device={device}"]
    recipe = load_recipe(RECIPE, overrides)
    assert (recipe.rollout.dtype, recipe.trainer.compute_dtype) == (expected, expected)


def test_an_explicit_dtype_is_kept_where_it_is_slow(monkeypatch):
    monkeypatch.setattr(hardware, "fast_bf16", lambda d: False)
    recipe = load_recipe(RECIPE, ["rollout.dtype=bfloat16", "trainer.compute_dtype=auto"])
    assert (recipe.rollout.dtype, recipe.trainer.compute_dtype) == ("bfloat16", "float32")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"rollout": {"engine": "hf", "weight_transport": "cuda_ipc"}},
            r"cuda_ipc needs rollout\.engine=lmdeploy or vllm",
        ),
        ({"rollout": {"engine": "vllm", "weight_transport": "cuda_ipc"}}, r"cuda_ipc .*placement\.device=cuda"),
        ({"rollout": {"engine": "vllm", "sleep_while_training": True}}, r"sleep_while_training needs .*lmdeploy"),
        ({"rollout": {"block_size": 48}}, r"rollout\.block_size=48: vLLM on cpu needs a positive multiple of 32"),
        ({"rollout": {"block_size": 0}, "placement": {"device": "cuda"}}, r"block_size=0: .*multiple of 16"),
        (
            {"rollout": {"lmdeploy_executor": "uni", "tensor_parallel_size": 2}},
            r"lmdeploy_executor='uni' runs on one GPU; rollout\.tensor_parallel_size=2 needs 'ray'",
        ),
        (
            {"model": {"path": "random:tiny"}, "rollout": {"lmdeploy_executor": "uni"}},
            r"'random:tiny' has none: use 'ray'",
        ),
    ],
)
def test_a_transport_the_engine_or_device_cannot_use_is_rejected(overrides, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(overrides)


def test_cuda_ipc_is_accepted_for_vllm_on_a_gpu():
    recipe = parse_recipe(
        {"rollout": {"engine": "vllm", "weight_transport": "cuda_ipc"}, "placement": {"device": "cuda"}}
    )
    assert recipe.rollout.weight_transport == "cuda_ipc"


@pytest.mark.parametrize(
    ("model", "tensor_parallel_size", "executor"),
    [("smollm2", 1, "uni"), ("smollm2", 2, "ray"), ("random:tiny", 1, "ray")],
)
def test_the_lmdeploy_executor_runs_in_process_where_it_can(model, tensor_parallel_size, executor):
    recipe = parse_recipe({"model": {"path": model}, "rollout": {"tensor_parallel_size": tensor_parallel_size}})
    assert recipe.rollout.lmdeploy_executor == executor
