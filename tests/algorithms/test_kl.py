import math

import pytest
import torch

from rlstack.algorithms import kl_penalty

# policy logprob 0 (p=1), reference log 0.5: log_r = log(0.5) = -0.693147
#   k1 = -log_r = 0.693147
#   k2 = log_r^2 / 2 = 0.240227
#   k3 = exp(log_r) - 1 - log_r = 0.5 - 1 + 0.693147 = 0.193147
LOGPROBS = torch.tensor([[0.0]])
REF = torch.tensor([[math.log(0.5)]])


@pytest.mark.parametrize(("estimator", "expected"), [("k1", 0.693147), ("k2", 0.240227), ("k3", 0.193147)])
def test_kl_estimator_golden_values(estimator, expected):
    assert kl_penalty(LOGPROBS, REF, estimator).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_is_zero_when_policy_equals_reference(estimator):
    logprobs = torch.tensor([[-0.3, -2.0]])
    assert kl_penalty(logprobs, logprobs.clone(), estimator).abs().max().item() == 0.0


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_gradient_reaches_policy_not_reference(estimator):
    logprobs = torch.tensor([[-0.5, -1.5]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    kl_penalty(logprobs, ref, estimator).sum().backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() > 0
    assert ref.grad is None


def test_k3_stays_finite_for_a_distant_reference():
    assert torch.isfinite(kl_penalty(torch.tensor([[0.0]]), torch.tensor([[80.0]]), "k3")).all()
