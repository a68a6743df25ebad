"""Splitting a list of work items between actors, without torch: the reward actors import it."""

from typing import TypeVar

T = TypeVar("T")


def chunks(items: list[T], num: int) -> list[list[T]]:
    """``items`` in at most ``num`` consecutive chunks of ``ceil(len(items) / num)``, the last one shorter."""
    size = max(1, -(-len(items) // num))
    return [items[start : start + size] for start in range(0, len(items), size)]
