import pytest

from reward.format import think_answer_format
from reward.gsm8k import gsm8k_exact_match
from reward.math import math_equivalence


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"$\frac{1}{2}$", "0.5", 1.0),
        (r"The answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", 1.0),
        ("So x = 0.25", r"\frac{1}{4}", 1.0),
        (r"$\boxed{2\sqrt{2}}$", r"\sqrt{8}", 1.0),
        ("The result is 50%", "0.5", 1.0),
        (r"$\boxed{3}$", "4", 0.0),
        (r"$\boxed{\frac{1}{3}}$", "0.33", 0.0),
        ("no answer here", "7", 0.0),
        ("", "7", 0.0),
    ],
)
def test_math_verify_equivalence_table(completion, answer, expected):
    assert math_equivalence(completion, answer=answer) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("3 apples + 4 apples = 7\n#### 7", "He has 3 + 4 = 7.\n#### 7", 1.0),
        ("#### 1,000", 1000, 1.0),
        ("#### 8", "#### 7", 0.0),
        ("7", 7, 0.0),
        ("#### seven", 7, 0.0),
    ],
)
def test_gsm8k_extraction(completion, answer, expected):
    assert gsm8k_exact_match(completion, answer=answer) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("  <think>\nlong\n</think>\n<answer>42</answer>\n", 1.0),
        ("<answer>42</answer>", 0.0),
        ("<think>a</think><answer>b</answer> trailing", 0.0),
        ("<think></think><answer>b</answer>", 0.0),
    ],
)
def test_think_answer_format(completion, expected):
    assert think_answer_format(completion) == expected
