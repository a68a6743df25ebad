"""The reward worker, in process: every hostile function scores the error value within its timeout."""

import time

import pytest

from actors.reward import RewardWorker, ScoreRequest
from rlstack.config import RewardFunction

ASSETS = "tests/assets/rewards.py"
TIMEOUT_S = 0.5


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch, request):
    monkeypatch.chdir(request.config.rootpath)


def worker(fn: str, error_score: float = 0.0, **kwargs) -> RewardWorker:
    return RewardWorker([RewardFunction(fn=f"{ASSETS}:{fn}", kwargs=kwargs)], TIMEOUT_S, error_score)


def requests(*texts: str, answer: int = 4) -> list[ScoreRequest]:
    return [ScoreRequest(t, "What is 2 + 2?", {"answer": answer}, len(t), "stop") for t in texts]


@pytest.mark.parametrize(
    ("fn", "kind"),
    [
        ("raises", "exception"),
        ("returns_nan", "bad_value"),
        ("returns_string", "bad_value"),
        ("sleeps_forever", "timeout"),
        ("async_sleeps_forever", "timeout"),
    ],
)
def test_hostile_reward_scores_the_error_value_within_the_timeout(fn, kind):
    start = time.monotonic()
    [(name, result)] = worker(fn, error_score=-1.0).score(requests("4", "5", "6")).items()
    elapsed = time.monotonic() - start
    assert name == fn
    assert result.scores == [-1.0, -1.0, -1.0]
    assert result.errors == {kind: 3}
    assert result.first_errors[kind]
    assert elapsed < TIMEOUT_S + 0.5


def test_first_traceback_names_the_failing_line():
    [result] = worker("raises").score(requests("4")).values()
    assert 'raise RuntimeError("reward bug")' in result.first_errors["exception"]


def test_many_hung_calls_do_not_exhaust_the_worker():
    hung = worker("sleeps_forever")
    for _ in range(3):  # 120 stuck calls, more than the pool's threads
        [result] = hung.score(requests(*["x"] * 40)).values()
        assert result.errors == {"timeout": 40}
    fine = RewardWorker([RewardFunction(fn="exact_match")], TIMEOUT_S, 0.0)
    fine.pool = hung.pool  # the same, partly stuck, threads still serve
    [result] = fine.score(requests("4", "5")).values()
    assert result.scores == [1.0, 0.0]


def test_async_reward_receives_row_fields():
    [result] = worker("async_match").score(requests("4", "5")).values()
    assert result.scores == [1.0, 0.0]


def test_batched_reward_scores_lists():
    [result] = worker("batched_length").score(requests("ab", "abcd")).values()
    assert result.scores == [2.0, 4.0]


def test_dict_return_logs_numeric_extras():
    [result] = worker("with_extras").score(requests("abc", "de")).values()
    assert result.scores == [1.0, 1.0]
    assert sorted(result.extras["chars"]) == [2.0, 3.0]


def test_optional_keywords_reach_functions_that_name_them():
    [result] = worker("length_aware").score([ScoreRequest("x", "p", {}, 7, "length")]).values()
    assert result.scores == [107.0]


def test_builtin_with_kwargs_in_the_pool():
    overlong = RewardWorker(
        [RewardFunction(fn="overlong_penalty", kwargs={"max_tokens": 40, "buffer_tokens": 8})], TIMEOUT_S, 0.0
    )
    [result] = overlong.score([ScoreRequest("x", "p", {}, n, "stop") for n in (30, 36, 41)]).values()
    assert result.scores == [0.0, -0.5, -1.0]
