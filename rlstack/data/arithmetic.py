"""The embedded task: synthetic arithmetic problems from a seed, with a held-out split."""

import random

from rlstack.data.prompts import Prompt, user_prompt

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
ENUMERATE_LIMIT = 1_000_000


def make_problem(a: int, b: int, operator: str) -> Prompt:
    """``What is a <op> b? Answer with just the number.``, with the result as the ``answer`` field and the
    worked answer ``a <op> b = result`` (the embedded model's own style) as ``solution``."""
    result = OPERATIONS[operator](a, b)
    question = f"What is {a} {operator} {b}? Answer with just the number."
    return user_prompt(question, answer=result, solution=f"{a} {operator} {b} = {result}")


def make_splits(
    digits: int, operator: str, num_train: int, num_eval: int, seed: int
) -> tuple[list[Prompt], list[Prompt]]:
    """Disjoint train and held-out problems with ``digits``-digit operands.

    One-digit operands range over 0..9; d digits over 10^(d-1)..10^d - 1. Small spaces
    are enumerated and shuffled; large ones are sampled without repeats. The held-out
    split is drawn first, so it depends only on ``seed`` and ``num_eval``.
    """
    if digits < 1:
        raise ValueError(f"data.digits={digits}: must be at least 1")
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    space = (high - low + 1) ** 2
    if num_eval >= space:
        raise ValueError(f"data.num_eval={num_eval}: only {space} distinct {digits}-digit problems exist")
    rng = random.Random(seed)
    total = min(space, num_eval + num_train)
    if space <= ENUMERATE_LIMIT:
        pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        rng.shuffle(pairs)
        pairs = pairs[:total]
    else:
        seen: set[tuple[int, int]] = set()
        pairs = []
        while len(pairs) < total:
            pair = (rng.randint(low, high), rng.randint(low, high))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    problems = [make_problem(a, b, operator) for a, b in pairs]
    return problems[num_eval:], problems[:num_eval]
