import math

import pytest
import torch

from rlstack.algorithms import CORRECTION_SUMS, correction_weights, effective_sample_size

# Engine logprobs 0, so each token's ratio rho = exp(trainer logprob) is the number inside the log. Cap 2: TIS
# truncates above 2, MIS keeps [0.5, 2]. No ratio sits on a bound, where float32 rounding would decide.
#   row 0: rho 3, 0.25, 1.5   (sequence: 3 * 0.25 * 1.5 = 1.125)
#   row 1: rho 0.6, -, -      (sequence: 0.6)
#   row 2: rho 1.6, 2.5, -    (sequence: 1.6 * 2.5 = 4)
TRAINER = torch.tensor(
    [[math.log(3), math.log(0.25), math.log(1.5)], [math.log(0.6), 5.0, 5.0], [math.log(1.6), math.log(2.5), 5.0]]
)  # the 5.0s are padding, which must not count
ENGINE = torch.zeros(3, 3)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "level", "weights", "corrected"),
    [
        # min(rho, 2) per token; 3 and 2.5 are truncated
        ("tis", "token", [[2.0, 0.25, 1.5], [0.6, 0, 0], [1.6, 2.0, 0]], 2),
        # 3 and 0.25 fall outside [0.5, 2] in row 0, 2.5 in row 2
        ("mis", "token", [[0, 0, 1.0], [1.0, 0, 0], [1.0, 0, 0]], 3),
        # min(1.125, 2), min(0.6, 2), min(4, 2) on each token of the sequence; row 2's two tokens truncated
        ("tis", "sequence", [[1.125, 1.125, 1.125], [0.6, 0, 0], [2.0, 2.0, 0]], 2),
        # 1.125 and 0.6 are kept, 4 is dropped with both of row 2's tokens
        ("mis", "sequence", [[1.0, 1.0, 1.0], [1.0, 0, 0], [0, 0, 0]], 2),
    ],
)
def test_correction_weights_golden_values(mode, level, weights, corrected):
    got, sums = correction_weights(TRAINER, ENGINE, MASK, mode, level, cap=2.0)
    assert got.flatten().tolist() == pytest.approx(torch.tensor(weights).flatten().tolist())
    assert sums["corrected"].item() == corrected


def test_mismatch_kl_sums_k3_over_response_tokens():
    # k3 = rho - 1 - log(rho): 3 -> 0.901388, 0.25 -> 0.636294, 1.5 -> 0.094535, 0.6 -> 0.110826,
    # 1.6 -> 0.129996, 2.5 -> 0.583709; sum 2.456748 (padding left out). The same whatever the mode or level.
    for mode, level in [("tis", "token"), ("mis", "sequence")]:
        _, sums = correction_weights(TRAINER, ENGINE, MASK, mode, level, cap=2.0)
        assert sums["mismatch_kl"].item() == pytest.approx(2.456748, abs=1e-5)


def test_a_small_mismatch_keeps_its_kl():
    # float32 logprobs 1e-3 and 1e-5 apart: k3 = x^2 / 2 + x^3 / 6 + ... = 5.001667e-7 and 5.0e-11 per token, which
    # float32's exp(x) - 1 - x gets 5% wrong and all but loses
    trainer = torch.tensor([[-1.0 + 1e-3, 1e-5]])
    _, sums = correction_weights(trainer, torch.tensor([[-1.0, 0.0]]), torch.ones(1, 2), "tis", "token", cap=2.0)
    assert sums["mismatch_kl"].item() == pytest.approx(5.001667e-7 + 5.0e-11, rel=1e-3)


def test_effective_sample_size_golden_values():
    # tokens: sum rho = 3 + 0.25 + 1.5 + 0.6 + 1.6 + 2.5 = 9.45, sum rho^2 = 9 + 0.0625 + 2.25 + 0.36 + 2.56 + 6.25
    # = 20.4825, ESS = 9.45^2 / (6 * 20.4825) = 89.3025 / 122.895 = 0.726657
    _, sums = correction_weights(TRAINER, ENGINE, MASK, "tis", "token", cap=2.0)
    assert sums["units"].item() == 6
    assert effective_sample_size(*(sums[k].item() for k in ("ratio", "ratio_sq", "units"))) == pytest.approx(0.726657)
    # sequences: sum rho = 1.125 + 0.6 + 4 = 5.725, sum rho^2 = 1.265625 + 0.36 + 16 = 17.625625,
    # ESS = 5.725^2 / (3 * 17.625625) = 32.775625 / 52.876875 = 0.619848
    _, sums = correction_weights(TRAINER, ENGINE, MASK, "mis", "sequence", cap=2.0)
    assert sums["units"].item() == 3
    assert effective_sample_size(*(sums[k].item() for k in ("ratio", "ratio_sq", "units"))) == pytest.approx(0.619848)


def test_an_engine_that_agrees_with_the_trainer_needs_no_correction():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 0.0]])
    for mode in ("tis", "mis"):
        for level in ("token", "sequence"):
            weights, sums = correction_weights(logprobs, logprobs, MASK[:2], mode, level, cap=1.5)
            assert torch.equal(weights, MASK[:2])
            assert sums["corrected"].item() == 0 and sums["mismatch_kl"].item() == 0
            assert effective_sample_size(sums["ratio"].item(), sums["ratio_sq"].item(), sums["units"].item()) == 1


def test_a_sequence_far_apart_stays_finite_and_is_truncated_or_dropped():
    trainer = torch.full((1, 100), 50.0)  # a log-ratio summing to 5000 over the sequence
    mask = torch.ones(1, 100)
    tis, tis_sums = correction_weights(trainer, torch.zeros(1, 100), mask, "tis", "sequence", cap=2.0)
    mis, _ = correction_weights(-trainer, torch.zeros(1, 100), mask, "mis", "sequence", cap=2.0)
    assert torch.equal(tis, torch.full((1, 100), 2.0)) and torch.equal(mis, torch.zeros(1, 100))
    assert all(torch.isfinite(v) for v in tis_sums.values())


def test_weights_carry_no_gradient():
    trainer = TRAINER.clone().requires_grad_()
    engine = ENGINE.clone().requires_grad_()
    weights, sums = correction_weights(trainer, engine, MASK, "tis", "token", cap=2.0)
    assert not weights.requires_grad and not any(v.requires_grad for v in sums.values())


def test_sums_come_in_the_declared_order_and_add_up_over_micro_batches():
    _, whole = correction_weights(TRAINER, ENGINE, MASK, "mis", "sequence", cap=2.0)
    parts = [
        correction_weights(TRAINER[i : i + 1], ENGINE[:1], MASK[i : i + 1], "mis", "sequence", 2.0)[1] for i in range(3)
    ]
    assert tuple(whole) == CORRECTION_SUMS
    for name in CORRECTION_SUMS:
        assert sum(p[name].item() for p in parts) == pytest.approx(whole[name].item())


@pytest.mark.parametrize(
    ("mode", "level", "key"),
    [("is", "token", "algorithm.rollout_correction"), ("tis", "batch", "algorithm.correction_level")],
)
def test_unknown_mode_or_level_names_the_key(mode, level, key):
    with pytest.raises(ValueError, match=key):
        correction_weights(TRAINER, ENGINE, MASK, mode, level, cap=2.0)
