"""Exact-match reward for the arithmetic task."""

import re

INTEGER = re.compile(r"-?\d[\d,]*")


def last_integer(text: str) -> int | None:
    """The last integer in ``text``, with thousands separators removed.

    >>> last_integer("3 + 4 = 7.")
    7
    >>> last_integer("It is -12, I think") is None
    False
    >>> last_integer("no digits") is None
    True
    """
    matches = INTEGER.findall(text)
    if not matches:
        return None
    return int(matches[-1].replace(",", ""))


def exact_match(completion: str, *, prompt: str = "", answer: int | str, **row: object) -> float:
    """1.0 when the last integer of ``completion`` equals ``answer``, else 0.0.

    >>> exact_match("The answer is 12.", answer=12)
    1.0
    >>> exact_match("12 or 13", answer=12)
    0.0
    """
    value = last_integer(completion)
    return float(value is not None and value == int(answer))
