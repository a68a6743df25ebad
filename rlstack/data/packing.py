"""Sequence packing for SFT: several tokenized examples in one row, none attending to another.

``pack`` groups examples under a token budget by first-fit-decreasing bin packing;
``collate_packed`` lays one group out as a ``[1, L]`` row whose ``position_ids`` restart
at 0 for every example. Targets are shifted inside each example, so no token is trained to
predict the first token of the next example. A batch of one example is the unpacked,
right-padded case, so there is no separate padded collate.

The row must be run with a block-diagonal causal mask. With transformers 5.19 and a Llama
model, either pass ``attention_mask=packed_mask(position_ids, ...)`` (``rlstack.data.attention``),
or pass no ``attention_mask`` and ``use_cache=False``,
and transformers derives the same mask from the ``position_ids`` restarts. A 2D
all-ones mask, or the default ``use_cache=True``, turns that detection off and every
example attends to the ones before it.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlstack.types import SFTExample


@dataclass(frozen=True)
class PackedRow:
    """Examples packed into one row of width ``L``, padding at the end."""

    input_ids: torch.Tensor
    """``[1, L]`` the examples' tokens one after another, then ``pad_id``."""
    position_ids: torch.Tensor
    """``[1, L]`` restarting at 0 for each example; the padding counts as one more sample."""
    target_ids: torch.Tensor
    """``[1, L]`` the token position ``t`` predicts: ``input_ids[t + 1]`` inside an example, else ``pad_id``."""
    target_mask: torch.Tensor
    """``[1, L]`` float, 1 where the target is an assistant token of the same example."""
    seq_lens: tuple[int, ...]
    """Lengths of the packed examples, in order; ``L - sum(seq_lens)`` padding tokens follow."""


def pack(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: indices of the items of ``lengths`` in each pack.

    Longest first, each item goes into the first pack that still has room, so no pack
    holds more than ``max_tokens`` tokens. Equal lengths keep their input order.
    """
    for i, size in enumerate(lengths):
        if size > max_tokens:
            raise ValueError(f"example {i} has {size} tokens, more than max_tokens={max_tokens}")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        size = lengths[i]
        fit = next((j for j, free in enumerate(room) if free >= size), None)
        if fit is None:
            packs.append([])
            room.append(max_tokens)
            fit = len(packs) - 1
        packs[fit].append(i)
        room[fit] -= size
    return packs


def packing_efficiency(examples: Sequence[SFTExample], packs: list[list[int]], max_tokens: int) -> float:
    """Real tokens over the tokens the packs occupy, ``sum(len) / (len(packs) * max_tokens)``.

    1.0 means no padding; ``1 - efficiency`` is the fraction of compute spent on padding
    when every pack is padded to ``max_tokens``.
    """
    num_real = sum(len(examples[i].input_ids) for p in packs for i in p)
    return num_real / (len(packs) * max_tokens)


def collate_packed(examples: Sequence[SFTExample], pad_id: int, width: int) -> PackedRow:
    """Lay ``examples`` out as one row of ``width`` tokens (see ``PackedRow``)."""
    num_real = sum(len(e.input_ids) for e in examples)
    if num_real > width:
        raise ValueError(f"{len(examples)} examples hold {num_real} tokens, more than width={width}")
    num_pad = width - num_real
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    target_mask: list[int] = []
    for e in examples:
        ids += e.input_ids
        positions += range(len(e.input_ids))
        targets += [*e.input_ids[1:], pad_id]  # the last token has no target in its own example
        target_mask += [*e.loss_mask[1:], 0]
    return PackedRow(
        input_ids=torch.tensor([ids + [pad_id] * num_pad]),
        position_ids=torch.tensor([positions + list(range(num_pad))]),
        target_ids=torch.tensor([targets + [pad_id] * num_pad]),
        target_mask=torch.tensor([target_mask + [0] * num_pad], dtype=torch.float32),
        seq_lens=tuple(len(e.input_ids) for e in examples),
    )
