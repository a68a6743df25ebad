import math

import pytest
import torch

from rlstack.algorithms.dpo import dpo_loss

LN3 = math.log(3.0)

# Two pairs, beta = 1. Log-ratios (policy - reference):
#   pair 0: chosen ln 3, rejected 0    -> h = +ln 3, sigmoid(h) = 3/4
#   pair 1: chosen 0,    rejected ln 3 -> h = -ln 3, sigmoid(h) = 1/4
POLICY_CHOSEN = torch.tensor([-1.0 + LN3, -2.0])
POLICY_REJECTED = torch.tensor([-3.0, -4.0 + LN3])
REFERENCE_CHOSEN = torch.tensor([-1.0, -2.0])
REFERENCE_REJECTED = torch.tensor([-3.0, -4.0])


def loss_and_metrics(**kwargs):
    return dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED, **kwargs)


def test_dpo_sigmoid_golden_value():
    # -log(3/4) = ln(4/3) and -log(1/4) = ln 4, mean over 2 pairs
    loss, _ = loss_and_metrics(num_pairs=2, beta=1.0)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)


def test_conservative_dpo_golden_value():
    # eps = 0.1: pair 0 -> 0.9 ln(4/3) + 0.1 ln 4; pair 1 -> 0.9 ln 4 + 0.1 ln(4/3); sum = ln(4/3) + ln 4
    loss, _ = loss_and_metrics(num_pairs=2, beta=1.0, label_smoothing=0.1)
    pair0 = 0.9 * math.log(4 / 3) + 0.1 * math.log(4)
    pair1 = 0.9 * math.log(4) + 0.1 * math.log(4 / 3)
    assert loss.item() == pytest.approx((pair0 + pair1) / 2)
    single, _ = dpo_loss(
        POLICY_CHOSEN[:1], POLICY_REJECTED[:1], REFERENCE_CHOSEN[:1], REFERENCE_REJECTED[:1], 1, 1.0, 0.1
    )
    assert single.item() == pytest.approx(pair0)  # 0.25891 + 0.13863 = 0.39754


def test_ipo_golden_value():
    # beta = 0.5 -> target margin 1 / (2 * 0.5) = 1
    # h = +ln 3 -> (ln 3 - 1)^2 = 0.00973;  h = -ln 3 -> (-ln 3 - 1)^2 = 4.40438
    loss, _ = loss_and_metrics(num_pairs=2, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx(((LN3 - 1) ** 2 + (-LN3 - 1) ** 2) / 2)


def test_metrics_golden_values():
    # beta = 2: chosen rewards 2 ln 3 and 0, rejected rewards 0 and 2 ln 3; only pair 0 prefers chosen
    _, metrics = loss_and_metrics(num_pairs=2, beta=2.0)
    assert metrics["rewards/chosen"].item() == pytest.approx(LN3)
    assert metrics["rewards/rejected"].item() == pytest.approx(LN3)
    assert metrics["rewards/margin"].item() == pytest.approx(0.0)
    assert metrics["rewards/accuracy"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(("loss_type", "label_smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0)])
def test_micro_batches_sum_to_the_whole_batch_loss_and_metrics(loss_type, label_smoothing):
    kwargs = dict(num_pairs=2, beta=0.5, label_smoothing=label_smoothing, loss_type=loss_type)
    whole, whole_metrics = loss_and_metrics(**kwargs)
    parts = [
        dpo_loss(
            POLICY_CHOSEN[i : i + 1],
            POLICY_REJECTED[i : i + 1],
            REFERENCE_CHOSEN[i : i + 1],
            REFERENCE_REJECTED[i : i + 1],
            **kwargs,
        )
        for i in range(2)
    ]
    assert torch.stack([loss for loss, _ in parts]).sum().item() == pytest.approx(whole.item())
    for key, value in whole_metrics.items():
        assert torch.stack([m[key] for _, m in parts]).sum().item() == pytest.approx(value.item())


def test_gradient_reaches_the_policy_but_not_the_reference():
    # d loss / d policy_chosen = -beta * sigmoid(-beta * h) / num_pairs = -(1/4) / 2 and -(3/4) / 2
    policy_chosen = POLICY_CHOSEN.clone().requires_grad_()
    policy_rejected = POLICY_REJECTED.clone().requires_grad_()
    reference_chosen = REFERENCE_CHOSEN.clone().requires_grad_()
    reference_rejected = REFERENCE_REJECTED.clone().requires_grad_()
    loss, _ = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, num_pairs=2, beta=1.0)
    loss.backward()
    assert policy_chosen.grad is not None and policy_rejected.grad is not None
    assert policy_chosen.grad.tolist() == pytest.approx([-0.125, -0.375])
    assert policy_rejected.grad.tolist() == pytest.approx([0.125, 0.375])
    assert reference_chosen.grad is None and reference_rejected.grad is None


def test_huge_margin_stays_finite():
    loss, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([-1e4]), torch.tensor([0.0]), 1, 1.0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.0)


def test_label_smoothing_with_ipo_is_rejected():
    with pytest.raises(ValueError, match="label_smoothing=0.1"):
        loss_and_metrics(num_pairs=2, label_smoothing=0.1, loss_type="ipo")


def test_unknown_loss_type_names_it():
    with pytest.raises(ValueError, match="loss_type='hinge'"):
        loss_and_metrics(num_pairs=2, loss_type="hinge")
