"""Format rewards: does the completion have the shape the task asks for?"""

import re

THINK_ANSWER = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.DOTALL)


def regex_format(completion: str, *, pattern: str, **row: object) -> float:
    """1.0 when ``pattern`` matches somewhere in the completion (``re.search``, DOTALL).

    >>> regex_format("Answer: 12", pattern=r"Answer: \\d+$")
    1.0
    >>> regex_format("12", pattern=r"Answer: \\d+")
    0.0
    """
    return float(re.search(pattern, completion, re.DOTALL) is not None)


def think_answer_format(completion: str, **row: object) -> float:
    """1.0 for exactly ``<think>...</think><answer>...</answer>`` and nothing around it.

    >>> think_answer_format("<think>2+2</think> <answer>4</answer>")
    1.0
    >>> think_answer_format("<answer>4</answer>")
    0.0
    """
    return float(THINK_ANSWER.match(completion) is not None)
