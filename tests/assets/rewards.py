"""Rewards used by tests: well-behaved ones that vary with any text, and hostile ones."""

import asyncio
import os
import time

from rlstack import batched


def distinct_characters(completion: str, *, prompt: str, **row: object) -> float:
    """Fraction of 20 possible distinct characters used by the completion."""
    return min(len(set(completion)), 20) / 20


def with_extras(completion: str, *, prompt: str, **row: object) -> dict:
    return {"score": 1.0, "chars": len(completion), "label": "not logged"}


def length_aware(completion: str, *, prompt: str, completion_tokens: int, finish_reason: str, **row: object) -> float:
    return completion_tokens + (100 if finish_reason == "length" else 0)


async def async_match(completion: str, *, prompt: str, answer: int, **row: object) -> float:
    await asyncio.sleep(0.01)
    return float(completion.strip() == str(answer))


@batched
def batched_length(completions: list[str], *, prompts: list[str], rows: list[dict]) -> list[float]:
    return [float(len(c)) for c in completions]


def raises(completion: str, **row: object) -> float:
    raise RuntimeError("reward bug")


def returns_nan(completion: str, **row: object) -> float:
    return float("nan")


def returns_string(completion: str, **row: object) -> str:
    return "high"


def sleeps_forever(completion: str, **row: object) -> float:
    time.sleep(10**6)
    return 1.0


async def async_sleeps_forever(completion: str, **row: object) -> float:
    await asyncio.sleep(10**6)
    return 1.0


def kills_its_process(completion: str, **row: object) -> float:
    if completion == "die":
        os._exit(1)
    return 1.0


def verl_fields(
    completion: str, *, prompt: str, answer: str, data_source: str, reward_model: dict, extra_info: dict, ability: str
) -> float:
    """1.0 when the veRL columns arrive as fields and ``answer`` is the nested ground truth."""
    consistent = answer == reward_model["ground_truth"] and data_source.startswith("synthetic/")
    return float(consistent and "index" in extra_info)
