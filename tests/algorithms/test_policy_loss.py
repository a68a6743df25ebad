import math

import pytest
import torch

from rlstack.algorithms import aggregate, clipped_surrogate


def test_clipped_surrogate_golden_values():
    # ratio 1.5 and 0.5 against advantages +1 and -1, clip 0.2:
    #   r=1.5, A=+1: min(1.5, 1.2) = 1.2   -> loss -1.2, clipped
    #   r=1.5, A=-1: min(-1.5, -1.2) = -1.5 -> loss  1.5, not clipped
    #   r=0.5, A=+1: min(0.5, 0.8) = 0.5   -> loss -0.5, not clipped
    #   r=0.5, A=-1: min(-0.5, -0.8) = -0.8 -> loss  0.8, clipped
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5)], [math.log(1.5), math.log(0.5)]])
    old = torch.zeros(2, 2)
    loss, clipped = clipped_surrogate(logprobs, old, torch.tensor([1.0, -1.0]))
    assert loss.flatten().tolist() == pytest.approx([-1.2, -0.5, 1.5, 0.8])
    assert clipped.tolist() == [[True, False], [False, True]]


def test_clip_higher_widens_only_the_upper_bound():
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5)]])
    loss, _ = clipped_surrogate(logprobs, torch.zeros(1, 2), torch.tensor([1.0]), clip_low=0.2, clip_high=0.28)
    assert loss.flatten().tolist() == pytest.approx([-1.28, -0.5])


def test_huge_log_ratio_stays_finite():
    loss, _ = clipped_surrogate(torch.tensor([[500.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0]))
    assert torch.isfinite(loss).all()


def test_gradient_reaches_policy_logprobs_but_not_old_logprobs():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.9]], requires_grad=True)
    loss, _ = clipped_surrogate(logprobs, old, torch.tensor([1.0]))
    loss.sum().backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() > 0
    assert old.grad is None


TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token_mean", 10 / 4),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq_mean_token_mean", (6 / 3 + 4 / 1) / 2),  # mean of per-sequence means
        ("seq_mean_token_sum_norm", 10 / (2 * 3)),  # sum / (2 sequences * cap of 3)
    ],
)
def test_aggregation_golden_values(mode, expected):
    assert aggregate(TOKEN_LOSS, MASK, mode, num_tokens=4, num_seqs=2, max_tokens=3).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_sum_to_the_whole_batch_loss(mode):
    whole = aggregate(TOKEN_LOSS, MASK, mode, num_tokens=4, num_seqs=2, max_tokens=3)
    parts = sum(aggregate(TOKEN_LOSS[i : i + 1], MASK[i : i + 1], mode, 4, 2, 3) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_unknown_aggregation_names_the_key():
    with pytest.raises(ValueError, match="algorithm.loss_agg"):
        aggregate(TOKEN_LOSS, MASK, "sum", 4, 2, 3)  # type: ignore[arg-type]


def test_sequence_level_ratio_is_the_geometric_mean_of_the_token_ratios():
    # GSPO, clip 0.2:
    #   row 0: token ratios 4 and 1, s = exp((log 4 + 0) / 2) = 2, A=+1: min(2, 1.2) = 1.2 -> loss -1.2 on both
    #          tokens, clipped (token-level PPO would give -1.2 and -1.0)
    #   row 1: token ratios 0.81 and 1, s = exp(log 0.81 / 2) = 0.9, A=-1: min(-0.9, -0.9) -> loss 0.9, not
    #          clipped; the padding position's 7.0 is left out of the mean
    logprobs = torch.tensor([[math.log(4.0), 0.0, 0.0], [math.log(0.81), 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss, clipped = clipped_surrogate(
        logprobs, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), level="sequence", mask=mask
    )
    assert (loss * mask).flatten().tolist() == pytest.approx([-1.2, -1.2, 0.0, 0.9, 0.9, 0.0])
    assert (clipped & mask.bool()).tolist() == [[True, True, False], [False, False, False]]


def test_sequence_level_gradient_weighs_every_token_of_a_sequence_the_same():
    # row 1 above, unclipped: the loss summed over its 2 tokens is 2 * s, and d(2 s) / d logprob_t = 2 * s / 2 = 0.9
    # on each response token (s_i / |y_i| per token of the broadcast loss, GSPO's gradient), 0 on padding
    logprobs = torch.tensor([[math.log(0.81), 0.0, 7.0]], requires_grad=True)
    old = torch.zeros(1, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = clipped_surrogate(logprobs, old, torch.tensor([-1.0]), level="sequence", mask=mask)
    (loss * mask).sum().backward()
    assert logprobs.grad is not None
    assert logprobs.grad.flatten().tolist() == pytest.approx([0.9, 0.9, 0.0])
    assert old.grad is None


def test_sequence_level_ratio_of_a_huge_log_ratio_stays_finite():
    loss, _ = clipped_surrogate(
        torch.tensor([[500.0, 500.0]]), torch.zeros(1, 2), torch.tensor([-1.0]), level="sequence", mask=torch.ones(1, 2)
    )
    assert torch.isfinite(loss).all()


def test_unknown_importance_level_names_the_key():
    with pytest.raises(ValueError, match="algorithm.importance_level"):
        clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), level="batch")  # type: ignore[arg-type]
