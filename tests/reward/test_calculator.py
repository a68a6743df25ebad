"""The calculator tool: arithmetic only, bounded work, and its environment's turns."""

import time

import pytest

from reward.calculator import MAX_DIGITS, Calculator, CalculatorError, answer, evaluate
from rlstack.environment import check_step


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("123 * 456", 56088),
        (" 7 - 10 ", -3),
        ("(1 + 2) ** 3 / 2", 13.5),
        ("7 // 2 + 7 % 2", 4),
        ("-(-4)", 4),
        ("2 ** -1", 0.5),
        ("1.5 * 4", 6.0),
    ],
)
def test_arithmetic_is_evaluated(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "not arithmetic: Call"),
        ("x + 1", "not arithmetic: Name"),
        ("(1).__class__", "not arithmetic: Attribute"),
        ("[1, 2]", "not arithmetic: List"),
        ("'a' * 3", "not arithmetic: Constant"),
        ("True + 1", "not arithmetic: Constant"),
        ("1j * 2", "not arithmetic: Constant"),
        ("1 < 2", "not arithmetic: Compare"),
        ("lambda: 1", "not arithmetic: Lambda"),
        ("1 +", "not an arithmetic expression"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("9 ** 9 ** 9", "exponent too large"),
        ("10 ** 150", f"more than {MAX_DIGITS} digits"),
        ("99999999999999999999 ** 20", f"more than {MAX_DIGITS} digits"),
        ("1" * 101, f"more than {MAX_DIGITS} digits"),
        ("1e300", f"more than {MAX_DIGITS} digits"),
        ("+".join(["1"] * 40), "more than 64 parts"),
        ("1" + " " * 300, "longer than 200 characters"),
    ],
)
def test_anything_but_bounded_arithmetic_is_refused(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        evaluate(expression)


def test_the_largest_products_allowed_take_no_time():
    start = time.perf_counter()
    big = "9" * 50
    evaluate(f"{big} * {big}")
    with pytest.raises(CalculatorError):
        evaluate(f"({big} * {big}) * ({big} * {big})")
    with pytest.raises(CalculatorError):
        evaluate("2 ** 400")
    assert time.perf_counter() - start < 0.1


def test_results_are_written_exactly_for_integers_and_to_twelve_digits_otherwise():
    assert [answer(56088), answer(6.0), answer(1 / 3)] == ["56088", "6", "0.333333333333"]


def test_a_tool_call_is_answered_and_a_turn_without_one_ends_the_trajectory():
    calculator = Calculator()
    opening = calculator.reset({"messages": [{"role": "user", "content": "What is 123 * 456?"}], "prompt": ""})
    assert [m["role"] for m in opening] == ["system", "user"]
    assert "<tool>" in opening[0]["content"]
    step = check_step(calculator.step(opening, "Let me compute. <tool>123 * 456</tool>"))
    assert step.observation == [{"role": "tool", "content": "56088"}]
    assert not step.done and step.info == {"tool_calls": 1, "tool_errors": 0}
    step = check_step(calculator.step(opening, "<tool>import os</tool>"))
    assert step.observation[0]["content"].startswith("error: ")
    assert step.info == {"tool_calls": 1, "tool_errors": 1}
    final = check_step(calculator.step(opening, "The answer is 56088."))
    assert final.done and final.observation is None and final.reward is None


def test_a_turn_with_neither_a_tool_call_nor_a_number_is_reminded():
    step = check_step(Calculator().step([], "I am not sure."))
    assert not step.done and step.observation[0]["content"].startswith("Write <tool>")
    assert step.info["tool_calls"] == 0
    assert check_step(Calculator(nudge=None).step([], "I am not sure.")).done


def test_an_example_exchange_opens_before_the_question():
    opening = Calculator(example=True, role="user").reset({"messages": [{"role": "user", "content": "What is 2 * 3?"}]})
    assert [m["role"] for m in opening] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert opening[2]["content"] == "<tool>12 * 34</tool>" and opening[3]["content"] == str(evaluate("12 * 34"))
    assert opening[-1]["content"] == "What is 2 * 3?"
