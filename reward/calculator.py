"""A calculator tool: the built-in multi-turn environment (``rollout.environment.fn:
reward.calculator:Calculator``).

The model asks with ``<tool>123 * 456</tool>``; the environment answers ``56088`` as a
message of its own and the model takes another turn. A turn with a number and no tool call
is the final answer, which ``reward.functions`` score; a turn with neither is answered with a
reminder (``nudge``), so the model may still answer within ``rollout.max_turns``.

A tool call is untrusted model output, so ``evaluate`` is a small interpreter of Python's
``ast`` that accepts numbers, ``+ - * / // % **`` and parentheses only (never ``eval``), and
bounds the work: at most ``MAX_CHARS`` characters and ``MAX_NODES`` nodes, and no number past
``MAX_DIGITS`` digits, checked before each operation so that ``9**9**9`` is refused, not
computed.
"""

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from rlstack.environment import Environment, Step

MAX_CHARS = 200
"""Longest expression evaluated."""
MAX_NODES = 64
"""Most syntax-tree nodes in an expression."""
MAX_DIGITS = 100
"""Most decimal digits of any number, operand or result."""
TOOL_CALL = re.compile(r"<tool>(.*?)</tool>", re.DOTALL)
NUMBER = re.compile(r"\d")
NUDGE = "Write <tool>expression</tool> to use the calculator, or reply with the answer as a number."
EXAMPLE = [
    {"role": "user", "content": "What is 12 * 34?"},
    {"role": "assistant", "content": "<tool>12 * 34</tool>"},
    {"role": "tool", "content": "408"},
    {"role": "assistant", "content": "408"},
]
"""A worked exchange put before the question with ``example=True``, for a small model to imitate."""
INSTRUCTIONS = (
    "You can use a calculator. To compute something, write <tool>expression</tool>, for example "
    "<tool>12 * 34</tool>, and wait for the result. When you know the answer, reply with the number only."
)

Number = int | float
OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class CalculatorError(ValueError):
    """An expression the calculator refuses; the message is what the model is told."""


def digits(value: Number) -> int:
    """Decimal digits of the integer part of ``value``."""
    return len(str(int(abs(value)))) if math.isfinite(value) else MAX_DIGITS + 1


def bounded(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    if digits(value) > MAX_DIGITS:
        raise CalculatorError(f"number with more than {MAX_DIGITS} digits")
    return value


def result_digits(op: ast.operator, left: Number, right: Number) -> float:
    """An upper bound on the digits of ``left op right``, known before computing it."""
    a, b = digits(left), digits(right)
    if isinstance(op, ast.Mult):
        return a + b
    if isinstance(op, ast.Pow):
        if abs(left) <= 1:
            return 1
        return abs(right) * math.log10(abs(left)) + 1 if right > 0 else 1
    return max(a, b) + 1


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; ``CalculatorError`` for anything else or anything too large.

    >>> evaluate("123 * 456")
    56088
    >>> evaluate("(1 + 2) ** 3 / 2")
    13.5
    >>> evaluate("__import__('os')")
    Traceback (most recent call last):
    ...
    reward.calculator.CalculatorError: not arithmetic: Call
    """
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression with more than {MAX_NODES} parts")
    return bounded(_value(tree.body))


def _value(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _value(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_DIGITS * 4:
            raise CalculatorError("exponent too large")
        if result_digits(node.op, left, right) > MAX_DIGITS + 1:
            raise CalculatorError(f"number with more than {MAX_DIGITS} digits")
        try:
            value = OPERATORS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
        if isinstance(value, complex):
            raise CalculatorError("result is not a real number")
        return bounded(value)
    raise CalculatorError(f"not arithmetic: {type(node).__name__}")


def answer(value: Number) -> str:
    """How the tool writes a result: integers exactly, other numbers to 12 significant digits."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.12g}"


class Calculator(Environment):
    """The model may call the calculator with ``<tool>expression</tool>``; the result (or ``error: <reason>``)
    comes back as a ``role`` message. A turn with a number and no tool call ends the trajectory: its text is the
    answer. A turn with neither gets ``nudge`` back (``None``: it ends the trajectory too). ``example`` opens
    with a worked exchange (``EXAMPLE``, its tool turn in ``role``) before the question."""

    def __init__(
        self, instructions: str = INSTRUCTIONS, role: str = "tool", nudge: str | None = NUDGE, example: bool = False
    ):
        self.instructions = instructions
        self.role = role
        self.nudge = nudge
        self.example = [{**m, "role": self.role} if m["role"] == "tool" else m for m in EXAMPLE] if example else []

    def reset(self, row: dict[str, Any]) -> list[dict[str, str]]:
        chat = [m for m in row["messages"] if m["role"] != "system"]
        return [{"role": "system", "content": self.instructions}, *self.example, *chat]

    def step(self, messages: list[dict[str, str]], completion: str) -> Step:
        calls = TOOL_CALL.findall(completion)
        if not calls:
            if self.nudge is None or NUMBER.search(completion):
                return Step(done=True)
            return Step(
                observation=[{"role": self.role, "content": self.nudge}], info={"tool_calls": 0, "tool_errors": 0}
            )
        try:
            reply, failed = answer(evaluate(calls[-1])), 0
        except CalculatorError as exc:
            reply, failed = f"error: {exc}", 1
        return Step(observation=[{"role": self.role, "content": reply}], info={"tool_calls": 1, "tool_errors": failed})
