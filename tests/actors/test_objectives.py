import pytest

from actors.objectives import HeldOutLoss, ItemLogprobs, make_objective
from rlstack.config import parse_recipe


@pytest.mark.parametrize(
    ("name", "scores_items", "has_held_out_loss"),
    [("grpo", True, False), ("sft", False, True), ("dpo", True, False)],
)
def test_each_algorithm_has_an_objective_with_what_its_controller_asks_of_it(name, scores_items, has_held_out_loss):
    objective = make_objective(parse_recipe({"algorithm": {"name": name}}), pad_id=0)
    assert isinstance(objective, ItemLogprobs) == scores_items
    assert isinstance(objective, HeldOutLoss) == has_held_out_loss
    assert len(objective.sum_names) == len(set(objective.sum_names)) > 0


def test_a_named_objective_overrides_the_recipes():
    objective = make_objective(parse_recipe({"algorithm": {"name": "grpo"}}), pad_id=0, name="sft")
    assert isinstance(objective, HeldOutLoss)
