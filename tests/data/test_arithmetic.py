import pytest

from rlstack.data.arithmetic import make_splits
from rlstack.data.prompts import EpochSampler


def test_splits_are_disjoint_and_deterministic():
    train, held_out = make_splits(1, "+", num_train=1000, num_eval=30, seed=3)
    assert len(held_out) == 30 and len(train) == 70  # 100 single-digit pairs in all
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert make_splits(1, "+", 1000, 30, 3) == (train, held_out)
    assert make_splits(1, "+", 1000, 30, 4)[1] != held_out


def test_answers_are_correct_for_each_operator():
    for operator, check in [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]:
        train, _ = make_splits(2, operator, num_train=20, num_eval=5, seed=0)
        for problem in train:
            a, b = (int(x) for x in problem.question.removeprefix("What is ").split("?")[0].split(f" {operator} "))
            assert 10 <= a <= 99 and 10 <= b <= 99
            assert problem.fields["answer"] == check(a, b)


def test_too_many_eval_problems_names_the_key():
    with pytest.raises(ValueError, match="data.num_eval=100"):
        make_splits(1, "+", 10, 100, 0)


def test_sampler_covers_every_problem_once_per_epoch():
    train, _ = make_splits(1, "+", 1000, 50, 0)
    sampler = EpochSampler(train, seed=0)
    first_epoch = sampler.next_batch(len(train))
    assert sorted(p.question for p in first_epoch) == sorted(p.question for p in train)
