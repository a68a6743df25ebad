"""Rewards used by tests: they vary with any text, so a random model still gets a signal."""


def distinct_characters(completion: str, *, prompt: str, **row: object) -> float:
    """Fraction of 20 possible distinct characters used by the completion."""
    return min(len(set(completion)), 20) / 20


def explode(completion: str, **row: object) -> float:
    raise RuntimeError("reward bug")


def not_a_number(completion: str, **row: object) -> float:
    return float("nan")


def wrong_type(completion: str, **row: object) -> str:
    return "high"


def slow(completion: str, **row: object) -> float:
    import time

    time.sleep(5)
    return 1.0
