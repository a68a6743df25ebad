import pytest
import torch

from rlstack.algorithms.sft import sft_loss

LOGPROBS = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_sft_loss_is_the_mean_nll_of_masked_tokens():
    # masked-in logprobs -2, -3, -4 over 3 tokens: (2 + 3 + 4) / 3 = 3
    loss, metrics = sft_loss(LOGPROBS, MASK, num_tokens=3)
    assert loss.item() == pytest.approx(3.0)
    assert metrics["num_tokens"].item() == 3


def test_micro_batches_sum_to_the_whole_batch_loss():
    parts = [sft_loss(LOGPROBS[i : i + 1], MASK[i : i + 1], num_tokens=3) for i in range(2)]
    assert torch.stack([loss for loss, _ in parts]).sum().item() == pytest.approx(3.0)
    assert torch.stack([m["num_tokens"] for _, m in parts]).sum().item() == 3


def test_gradient_is_minus_mask_over_num_tokens():
    logprobs = LOGPROBS.clone().requires_grad_()
    loss, _ = sft_loss(logprobs, MASK, num_tokens=3)
    loss.backward()
    assert logprobs.grad is not None
    assert torch.allclose(logprobs.grad, -MASK / 3)
