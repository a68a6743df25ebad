"""A multi-turn trajectory trains on the model's tokens only: the environment's are context."""

from dataclasses import replace

import pytest
import torch

from actors.objectives import Policy, make_objective
from rlstack.config import parse_recipe
from rlstack.data.batching import padded_responses, padding_sample
from rlstack.types import Completion, Sample, TrainBatch
from tests.actors.test_objectives import tiny_policy

PROMPT = (1, 2, 3)
TURNS = (5, 6, 7, 20, 21, 8, 9)  # model 5 6 7, environment 20 21, model 8 9
MASK = (1, 1, 1, 0, 0, 1, 1)


def trajectory(env_logprob: float = 0.0, mask: tuple[int, ...] | None = MASK) -> Sample:
    logprobs = tuple(-1.0 if m else env_logprob for m in MASK)
    return Sample(PROMPT, Completion(TURNS, logprobs, "stop", 0, "", model_mask=mask), advantage=1.5)


def step(sample: Sample, kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float], Policy]:
    objective = make_objective(parse_recipe({"algorithm": {"kl_coef": kl_coef}}), pad_id=0)
    model = tiny_policy()
    if kl_coef:
        model = replace(model, reference=tiny_policy().model)
    batch = TrainBatch((sample,), num_tokens=sample.completion.num_model_tokens, num_seqs=1, max_tokens=16)
    loss, sums = objective.loss(model, batch, [[sample]])
    return loss, dict(zip(objective.sum_names, sums.tolist(), strict=True)), model


def test_the_response_mask_is_zero_on_environment_tokens():
    data = padded_responses([trajectory(), Sample(PROMPT, Completion((5, 6), (-1.0, -1.0), "stop", 0, ""), 0.0)], 0)
    assert data["response_mask"].tolist() == [[1, 1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0, 0]]


def test_environment_tokens_carry_no_loss_whatever_their_logprobs():
    loss, sums, _ = step(trajectory(env_logprob=0.0), kl_coef=0.1)
    other, other_sums, _ = step(trajectory(env_logprob=-30.0), kl_coef=0.1)
    assert loss.item() == pytest.approx(other.item(), abs=1e-6)
    assert sums["tokens"] == 5 == other_sums["tokens"]
    assert sums["entropy"] == pytest.approx(other_sums["entropy"])
    assert sums["kl"] == pytest.approx(other_sums["kl"])
    assert other_sums["logprob_mismatch"] == pytest.approx(sums["logprob_mismatch"])


def test_the_token_mean_counts_model_tokens_only():
    # Engine logprobs equal to the trainer's make every ratio 1, so each model token's surrogate is -A = -1.5 and
    # token_mean over the batch's 5 model tokens is -1.5 * 5 / 5 = -1.5 (the 2 environment tokens counted would
    # give -1.5 * 7 / 5 = -2.1).
    objective = make_objective(parse_recipe({}), pad_id=0)
    model = tiny_policy()
    (trainer,) = objective.logprobs(model, [trajectory()], lambda groups, padding: groups)
    sample = replace(trajectory(), completion=replace(trajectory().completion, logprobs=tuple(trainer)))
    batch = TrainBatch((sample,), num_tokens=5, num_seqs=1, max_tokens=16)
    loss, _ = objective.loss(model, batch, [[sample]])
    assert loss.item() == pytest.approx(-1.5, abs=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.model.parameters() if p.grad is not None)


def test_an_all_model_mask_trains_as_a_single_turn_completion():
    masked, sums, _ = step(trajectory(mask=(1,) * len(TURNS)))
    plain, plain_sums, _ = step(trajectory(mask=None))
    assert masked.item() == plain.item()
    assert sums == plain_sums


def test_a_mask_must_have_one_entry_per_token_and_padding_drops_it():
    with pytest.raises(ValueError, match="model_mask has 2"):
        Completion((1, 2, 3), (0.0,) * 3, "stop", 0, "", model_mask=(1, 0))
    assert padding_sample(trajectory()).completion.model_mask is None
