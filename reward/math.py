"""Math answer equivalence with Hugging Face's ``math-verify``."""

from math_verify import parse, verify


def math_equivalence(completion: str, *, prompt: str = "", answer: str | int | float, **row: object) -> float:
    """1.0 when the completion's final answer is mathematically equal to ``answer``.

    ``math-verify`` parses LaTeX and plain expressions (boxed answers, fractions,
    percentages, sets) and compares them symbolically.

    >>> math_equivalence("So the result is $\\\\boxed{\\\\frac{1}{2}}$", answer="0.5")
    1.0
    >>> math_equivalence("The answer is $3$", answer="4")
    0.0
    """
    gold = parse(f"${answer}$" if not str(answer).startswith("$") else str(answer))
    predicted = parse(completion)
    if not gold or not predicted:
        return 0.0
    return float(verify(gold, predicted))
