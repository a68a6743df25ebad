"""GSM8K-style answers: the final answer follows ``####``."""

import re

FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def extract_final_answer(text: str) -> str | None:
    """The number after the last ``####``, without thousands separators.

    >>> extract_final_answer("She pays 3 * 4 = 12 dollars.\\n#### 12")
    '12'
    >>> extract_final_answer("#### 1,250.")
    '1250'
    >>> extract_final_answer("The answer is 12") is None
    True
    """
    matches = FINAL_ANSWER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def gsm8k_exact_match(completion: str, *, prompt: str = "", answer: str | int | float, **row: object) -> float:
    """1.0 when the completion's ``#### N`` equals the row's answer (itself ``... #### N`` or a number).

    >>> gsm8k_exact_match("2 + 2 = 4\\n#### 4", answer="Add them.\\n#### 4")
    1.0
    >>> gsm8k_exact_match("#### 4.0", answer=4)
    1.0
    >>> gsm8k_exact_match("4", answer=4)
    0.0
    """
    predicted = extract_final_answer(completion)
    expected = extract_final_answer(answer) if isinstance(answer, str) and "####" in answer else str(answer)
    if predicted is None or expected is None:
        return 0.0
    a, b = _number(predicted), _number(expected.replace(",", ""))
    return float(a is not None and b is not None and a == b)
