"""A bad ``rollout.environment`` fails before any actor starts, naming the key and the reason."""

from pathlib import Path

import pytest

from rlstack.config import RecipeError, load_recipe
from rlstack.preflight import check_context, demands, preflight

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "grpo_tool_tiny_random.yaml"
ENVS = ROOT / "tests" / "assets" / "environments.py"


def checked(tmp_path: Path, *overrides: str) -> None:
    recipe = load_recipe(RECIPE, [f"tracking.run_root={tmp_path}", "tracking.name=run", *overrides])
    preflight(recipe, tmp_path / "run")


def test_the_shipped_tool_recipe_passes_preflight(tmp_path):
    checked(tmp_path)


@pytest.mark.parametrize(
    ("fn", "kwargs", "reason"),
    [
        ("no_such_package.envs:Calculator", "{}", "cannot import 'no_such_package.envs': ModuleNotFoundError"),
        (f"{ENVS.parent}/missing.py:Calculator", "{}", "cannot import"),
        (f"{ENVS}:Missing", "{}", "has no function 'Missing'"),
        (f"{ENVS}:NoStep", "{}", "NoStep has no step method"),
        ("reward.arithmetic:exact_match", "{}", "is not a class"),
        ("rlstack.environment:Environment", "{}", "does not implement step"),
        (f"{ENVS}:Countdown", "{steps: 3}", "unexpected keyword argument 'steps'"),
    ],
)
def test_a_bad_environment_is_refused_naming_the_key(tmp_path, fn, kwargs, reason):
    with pytest.raises(ValueError, match="rollout.environment") as error:  # RecipeError is a ValueError
        checked(tmp_path, f"rollout.environment.fn={fn}", f"rollout.environment.kwargs={kwargs}")
    assert reason in str(error.value)


def test_an_environment_reference_without_a_class_name_is_refused_by_the_schema():
    with pytest.raises(RecipeError, match="rollout.environment.fn.*'package.module:Class'"):
        load_recipe(RECIPE, ["rollout.environment.fn=calculator"])


def test_a_trajectory_must_fit_the_models_context():
    recipe = load_recipe(RECIPE, ["rollout.max_trajectory_tokens=2000", "data.max_prompt_tokens=100"])
    with pytest.raises(RecipeError, match="rollout.max_trajectory_tokens=2000 with data.max_prompt_tokens=100"):
        check_context(recipe, 2048)


def test_the_environment_actors_count_in_the_placement():
    recipe = load_recipe(RECIPE, ["rollout.environment.num_workers=3", "rollout.environment.num_cpus=0.5"])
    (environment,) = [d for d in demands(recipe) if d.count_key == "rollout.environment.num_workers"]
    assert environment.count == 3
    assert environment.resources == {"CPU": (0.5, "rollout.environment.num_cpus")}


def test_rlstack_train_exits_2_on_a_bad_environment_before_anything_starts(tmp_path, capsys):
    from rlstack.train import main

    code = main(
        [str(RECIPE), f"tracking.run_root={tmp_path}", "tracking.name=run", f"rollout.environment.fn={ENVS}:NoStep"]
    )
    assert code == 2
    assert "rollout.environment" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
