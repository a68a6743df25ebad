import pytest

from actors.reward import RewardWorker, ScoreRequest
from reward.loader import load_reward

ASSETS = "tests/assets/rewards.py"


def test_loads_module_function():
    assert load_reward("reward.arithmetic:exact_match")("4", prompt="", answer=4) == 1.0


def test_loads_function_from_a_file(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)
    assert load_reward(f"{ASSETS}:distinct_characters")("aab", prompt="") == pytest.approx(2 / 20)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exact_match", "expected 'package.module:function'"),
        ("no_such_module:fn", "cannot import 'no_such_module'"),
        ("reward.arithmetic:nope", "has no function 'nope'"),
        ("missing/file.py:fn", "cannot import 'missing/file.py'"),
    ],
)
def test_bad_reward_name_raises_naming_the_key(spec, message):
    with pytest.raises(ValueError, match="reward.function") as info:
        load_reward(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("fn", ["explode", "not_a_number", "wrong_type", "slow"])
def test_failing_reward_scores_zero_and_is_counted(fn, monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)
    worker = RewardWorker(f"{ASSETS}:{fn}", timeout_s=0.5)
    scores = worker.score([ScoreRequest("x", "p", {}), ScoreRequest("y", "p", {})])
    assert scores.rewards == [0.0, 0.0]
    assert scores.num_errors == 2
    assert scores.first_error


def test_rows_reach_the_reward_as_keywords():
    worker = RewardWorker("reward.arithmetic:exact_match", timeout_s=5)
    scores = worker.score([ScoreRequest("9", "What is 4 + 5?", {"answer": 9}), ScoreRequest("8", "q", {"answer": 9})])
    assert scores.rewards == [1.0, 0.0]
    assert scores.num_errors == 0
