"""The embedded task: synthetic arithmetic problems from a seed, with a held-out split."""

import random
from dataclasses import dataclass
from typing import Any

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
ENUMERATE_LIMIT = 1_000_000


@dataclass(frozen=True)
class Problem:
    """One arithmetic question and its integer answer."""

    question: str
    """The user message, e.g. ``What is 3 + 4? Answer with just the number.``"""
    answer: int
    """The correct result."""

    def row(self) -> dict[str, Any]:
        """The dataset row passed to reward functions as keyword fields."""
        return {"question": self.question, "answer": self.answer}


def make_problem(a: int, b: int, operator: str) -> Problem:
    return Problem(f"What is {a} {operator} {b}? Answer with just the number.", OPERATIONS[operator](a, b))


def make_splits(
    digits: int, operator: str, num_train: int, num_eval: int, seed: int
) -> tuple[list[Problem], list[Problem]]:
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


class PromptSampler:
    """Endless epochs over the training problems, reshuffled per epoch from the seed."""

    def __init__(self, problems: list[Problem], seed: int):
        self.problems = problems
        self.seed = seed
        self.epoch = 0
        self.order: list[int] = []

    def state(self) -> dict[str, Any]:
        """Where the sampler is: enough to continue with the next unseen problem."""
        return {"epoch": self.epoch, "order": list(self.order)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.order = state["epoch"], list(state["order"])

    def next_batch(self, size: int) -> list[Problem]:
        batch: list[Problem] = []
        while len(batch) < size:
            if not self.order:
                self.order = list(range(len(self.problems)))
                random.Random(self.seed * 1000 + self.epoch).shuffle(self.order)
                self.epoch += 1
            batch.append(self.problems[self.order.pop()])
        return batch
