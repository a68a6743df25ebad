import pytest
import torch

from rlstack.algorithms import group_advantages


def test_grpo_advantage_is_centered_and_std_normalized():
    # rewards 1,0,0,1: mean 0.5, deviations ±0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735
    # so A = ±0.5 / 0.57735 = ±0.866025
    adv, _ = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert adv.tolist()[0] == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_dr_grpo_advantage_is_only_centered():
    adv, _ = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]]), normalize_std=False)
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [1.0, -1.0, 0.0, 0.0]]


def test_group_with_equal_rewards_has_zero_advantage():
    adv, metrics = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]))
    assert adv[0].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(adv).all()
    assert metrics["zero_variance_fraction"] == 0.5
