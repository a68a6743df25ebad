import pytest

from reward.arithmetic import exact_match, last_integer


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 7), ("3 + 4 = 7.", 7), ("The sum is 1,234", 1234), ("-5 it is", -5), ("none", None), ("", None)],
)
def test_last_integer(text, value):
    assert last_integer(text) == value


@pytest.mark.parametrize(
    ("text", "answer", "score"),
    [("12", 12, 1.0), ("The answer is 12.", "12", 1.0), ("12 or 13", 12, 0.0), ("twelve", 12, 0.0), ("", 0, 0.0)],
)
def test_exact_match_scores_the_last_integer(text, answer, score):
    assert exact_match(text, prompt="What is 5 + 7?", answer=answer) == score
