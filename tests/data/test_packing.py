from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from rlstack.data.attention import packed_mask
from rlstack.data.packing import (
    PackedRow,
    SFTExample,
    collate_packed,
    pack,
    packing_efficiency,
)


def example(length: int, start: int = 1) -> SFTExample:
    return SFTExample(tuple(range(start, start + length)), (0,) + (1,) * (length - 1))


def test_first_fit_decreasing_golden_packs():
    # lengths by index 3 5 2 4 3 2 1, budget 8; longest first into the first pack with room:
    #   5 (i1) -> new A (3 left); 4 (i3) -> new B (4 left); 3 (i0) -> A (0 left); 3 (i4) -> B (1 left)
    #   2 (i2) -> new C (6 left); 2 (i5) -> C (4 left); 1 (i6) -> B (0 left)
    examples = [example(n) for n in (3, 5, 2, 4, 3, 2, 1)]
    packs = pack([len(e.input_ids) for e in examples], max_tokens=8)
    assert packs == [[1, 0], [3, 4, 6], [2, 5]]
    assert all(sum(len(examples[i].input_ids) for i in p) <= 8 for p in packs)
    assert packing_efficiency(examples, packs, max_tokens=8) == pytest.approx(20 / 24)  # 20 tokens in 3 x 8


def test_example_longer_than_the_budget_names_its_index_and_length():
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than max_tokens=8"):
        pack([2, 9], max_tokens=8)


def test_collate_restarts_positions_and_never_predicts_across_samples():
    a = SFTExample((10, 11, 12), (0, 1, 1))
    b = SFTExample((20, 21), (0, 1))
    row = collate_packed([a, b], pad_id=0, width=7)
    assert row.input_ids.tolist() == [[10, 11, 12, 20, 21, 0, 0]]
    assert row.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    # position t predicts input_ids[t + 1] of its own sample; the last token of each sample has no target
    assert row.target_ids.tolist() == [[11, 12, 0, 21, 0, 0, 0]]
    assert row.target_mask.tolist() == [[1, 1, 0, 1, 0, 0, 0]]
    assert row.seq_lens == (3, 2)


def test_collate_rejects_a_pack_wider_than_the_row():
    with pytest.raises(ValueError, match="more than width=4"):
        collate_packed([example(3), example(2)], pad_id=0, width=4)


def test_attention_mask_is_block_diagonal_causal():
    mask = packed_mask(torch.tensor([[0, 1, 0, 1, 2]]), "sdpa", "cpu")
    assert mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


EXAMPLES = [SFTExample((5, 9, 3, 7, 1), (0,) * 5), SFTExample((8, 2, 6), (0,) * 3), SFTExample((4, 4), (0,) * 2)]


def packed_and_alone_logits(
    model: LlamaForCausalLM, forward_kwargs: Callable[[PackedRow], dict[str, Any]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Logits of each example inside the packed row and run alone."""
    row = collate_packed(EXAMPLES, pad_id=0, width=12)
    with torch.no_grad():
        packed = model(row.input_ids, position_ids=row.position_ids, **forward_kwargs(row)).logits[0]  # [L, V]
        alone = [model(torch.tensor([e.input_ids])).logits[0] for e in EXAMPLES]
    starts = [sum(row.seq_lens[:i]) for i in range(len(EXAMPLES))]
    return [(packed[s : s + len(a)], a) for s, a in zip(starts, alone, strict=True)]


@pytest.mark.parametrize(
    "forward_kwargs",
    [
        pytest.param(lambda row: {"attention_mask": packed_mask(row.position_ids, "sdpa", "cpu")}, id="4d_mask"),
        pytest.param(lambda row: {"use_cache": False}, id="position_ids_only"),
    ],
)
def test_packed_samples_do_not_attend_to_each_other(tiny_llama, forward_kwargs):
    for packed, alone in packed_and_alone_logits(tiny_llama, forward_kwargs):
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "forward_kwargs",
    [
        pytest.param(lambda row: {"attention_mask": torch.ones(1, 1, 12, 12, dtype=torch.bool).tril()}, id="causal_4d"),
        pytest.param(lambda row: {"attention_mask": torch.ones(1, 12), "use_cache": False}, id="ones_2d"),
        pytest.param(lambda row: {}, id="default_use_cache"),
    ],
)
def test_plain_causal_attention_leaks_across_samples(tiny_llama, forward_kwargs):
    pairs = packed_and_alone_logits(tiny_llama, forward_kwargs)
    torch.testing.assert_close(*pairs[0], atol=1e-5, rtol=0)  # the first sample has nothing before it
    assert all((packed - alone).abs().max() > 1e-3 for packed, alone in pairs[1:])
