import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actors.objectives import HeldOutLoss, ItemLogprobs, Policy, make_objective
from actors.objectives.grpo import GRPOObjective
from rlstack.config import RecipeError, load_recipe, parse_recipe
from rlstack.forward import add_response_scoring
from rlstack.types import Completion, Sample, TrainBatch

RECIPE = Path(__file__).parents[2] / "recipes" / "grpo_tiny_random.yaml"


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


LN4 = math.log(4.0)


def tiny_policy() -> Policy:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    add_response_scoring(model, chunk_tokens=8)
    return Policy(model, None, torch.device("cpu"), pad_id=0)


def grpo_step(algorithm: dict, shift: list[list[float]] | None = None) -> tuple[torch.Tensor, dict[str, float], int]:
    """The loss and metrics of one micro-batch of 3 samples (advantages 1, -0.5, 2; 3, 2 and 4 tokens) whose engine
    logprobs are the trainer's own minus ``shift`` (so each token's ratio is ``exp(shift)``), and its token count."""
    recipe = parse_recipe({"algorithm": {"name": "grpo", **algorithm}})
    objective = make_objective(recipe, pad_id=0)
    assert isinstance(objective, GRPOObjective)
    policy = tiny_policy()
    responses, advantages = [(5, 6, 7), (8, 9), (10, 11, 12, 13)], [1.0, -0.5, 2.0]
    samples = [
        Sample((1, 2, 3), Completion(ids, (0.0,) * len(ids), "length", 0, ""), adv)
        for ids, adv in zip(responses, advantages, strict=True)
    ]
    trainer = objective.logprobs(policy, samples, lambda groups, padding: groups)
    shift = shift or [[0.0] * len(ids) for ids in responses]
    samples = [
        replace(s, completion=replace(s.completion, logprobs=tuple(t - d for t, d in zip(lp, ds, strict=True))))
        for s, lp, ds in zip(samples, trainer, shift, strict=True)
    ]
    num_tokens = sum(map(len, responses))
    batch = TrainBatch(tuple(samples), num_tokens=num_tokens, num_seqs=3, max_tokens=4)
    loss, sums = objective.loss(policy, batch, [samples])  # one tree: the samples share their prompt
    assert len(sums) == len(objective.sum_names)
    return loss, objective.metrics(dict(zip(objective.sum_names, sums.tolist(), strict=True))), num_tokens


def test_without_correction_grpo_logs_no_correction_metrics():
    _, metrics, _ = grpo_step({})
    assert not [k for k in metrics if k.startswith("correction/")]


def test_a_correction_with_an_agreeing_engine_keeps_the_uncorrected_loss():
    # ratio 1 everywhere: the surrogate is -A per token, so token_mean gives -(1*3 - 0.5*2 + 2*4) / 9 = -10/9
    plain, _, _ = grpo_step({})
    for mode in ("tis", "mis"):
        loss, metrics, _ = grpo_step({"rollout_correction": mode})
        assert loss.item() == pytest.approx(plain.item(), abs=1e-5) and plain.item() == pytest.approx(-10 / 9, abs=1e-5)
        assert metrics["correction/fraction"] == 0
        assert metrics["correction/mismatch_kl"] == pytest.approx(0, abs=1e-6)
        assert metrics["correction/ess"] == pytest.approx(1)


def test_tis_truncates_the_ratio_at_the_cap():
    # every ratio is 4, truncated to the cap 2: the loss doubles to -20/9; k3 = 4 - 1 - ln 4 = 1.613706 per token;
    # all ratios equal, so the effective sample size is 1
    loss, metrics, _ = grpo_step({"rollout_correction": "tis"}, [[LN4] * 3, [LN4] * 2, [LN4] * 4])
    assert loss.item() == pytest.approx(-20 / 9, abs=1e-5)
    assert metrics["correction/fraction"] == 1
    assert metrics["correction/mismatch_kl"] == pytest.approx(1.613706, abs=1e-5)
    assert metrics["correction/ess"] == pytest.approx(1)
    loss.backward()  # the weights are constants; the policy still gets a gradient


def test_mis_at_sequence_level_drops_a_sequence_whose_product_of_ratios_leaves_the_band():
    # sample 0: token ratios 4, 1/4, 4 multiply to 4 > 2 and the sequence is dropped (at token level, all three
    # tokens would be); the others agree. Loss -(-0.5*2 + 2*4) / 9 = -7/9; 3 of 9 tokens dropped. Sequence
    # ratios 4, 1, 1: ESS = 6^2 / (3 * 18) = 2/3
    shift = [[LN4, -LN4, LN4], [0.0] * 2, [0.0] * 4]
    loss, metrics, _ = grpo_step({"rollout_correction": "mis", "correction_level": "sequence"}, shift)
    assert loss.item() == pytest.approx(-7 / 9, abs=1e-5)
    assert metrics["correction/fraction"] == pytest.approx(3 / 9)
    assert metrics["correction/ess"] == pytest.approx(2 / 3, abs=1e-5)


def test_sequence_level_importance_is_one_ratio_per_sequence():
    # no correction: the PPO ratio is against the engine. Sample 2's token ratios 2, 1/2, 2, 1/2:
    #   token level: min(2, 1.2) + min(0.5, 0.8) twice -> sample 2's loss -2 * (1.2 + 0.5) * 2 = -6.8;
    #   sequence level: s = 1 -> -2 * 4 = -8. Samples 0 and 1 have ratio 1: 3*(-1) + 2*(0.5) = -2.
    # token_mean: (-2 - 6.8) / 9 against (-2 - 8) / 9
    ln2 = math.log(2.0)
    shift = [[0.0] * 3, [0.0] * 2, [ln2, -ln2, ln2, -ln2]]
    token, _, _ = grpo_step({}, shift)
    sequence, _, _ = grpo_step({"importance_level": "sequence"}, shift)
    assert token.item() == pytest.approx(-8.8 / 9, abs=1e-5)
    assert sequence.item() == pytest.approx(-10 / 9, abs=1e-5)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.correction_cap=1", "algorithm.correction_cap"),
        ("algorithm.correction_cap=0.5", "algorithm.correction_cap"),
        ("algorithm.rollout_correction=is", "algorithm.rollout_correction"),
        ("algorithm.importance_level=batch", "algorithm.importance_level"),
    ],
)
def test_bad_correction_settings_are_refused_naming_the_key(override, key):
    with pytest.raises(RecipeError, match=key):
        load_recipe(RECIPE, [override])


def test_a_correction_needs_one_minibatch():
    with pytest.raises(RecipeError, match=r"algorithm\.rollout_correction='tis' needs algorithm\.num_minibatches=1"):
        load_recipe(RECIPE, ["algorithm.rollout_correction=tis", "algorithm.num_minibatches=2"])
