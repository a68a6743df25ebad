import pytest

from actors.optim import lr_multiplier


def test_warmup_is_linear_then_constant():
    # 4 warm-up steps: factors 1/4, 2/4, 3/4, 4/4, then 1
    assert [lr_multiplier(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decays_to_zero_halfway_at_one_half():
    # after 2 warm-up steps, 8 decay steps: progress 0 -> 1.0, 4/8 -> 0.5, 8/8 -> 0.0
    assert lr_multiplier(2, 2, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(10, 2, 10, "cosine") == pytest.approx(0.0)


def test_linear_decay_never_goes_negative():
    assert [lr_multiplier(s, 0, 4, "linear") for s in (0, 2, 4, 6)] == [1.0, 0.5, 0.0, 0.0]
