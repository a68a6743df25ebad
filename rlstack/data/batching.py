"""Turning samples into padded tensors, rank shards and micro-batches."""

from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from rlstack.types import Completion, PreferencePair, Sample

T = TypeVar("T")


@dataclass(frozen=True)
class Collated:
    """Samples as tensors: prompts left-padded to ``P``, responses right-padded to ``R``.

    Every response starts at column ``P``, so the logits of positions ``P-1 .. P+R-2``
    predict the response tokens and the model needs to project only the last ``R + 1``
    hidden states onto the vocabulary.
    """

    input_ids: torch.Tensor
    """``[B, P + R]`` prompt and response tokens."""
    attention_mask: torch.Tensor
    """``[B, P + R]`` 1 on real tokens."""
    position_ids: torch.Tensor
    """``[B, P + R]`` positions counted from each sequence's first real token."""
    response_ids: torch.Tensor
    """``[B, R]`` response tokens."""
    response_mask: torch.Tensor
    """``[B, R]`` float, 1 on response tokens that count in the loss."""
    old_logprobs: torch.Tensor
    """``[B, R]`` engine logprobs of the response tokens."""
    advantages: torch.Tensor
    """``[B]``."""


def collate(samples: list[Sample], pad_id: int) -> Collated:
    width = max(len(s.prompt_ids) for s in samples)
    length = max(len(s.completion.token_ids) for s in samples)
    ids, attention = [], []
    for s in samples:
        prompt, response = list(s.prompt_ids), list(s.completion.token_ids)
        left, right = width - len(prompt), length - len(response)
        ids.append([pad_id] * left + prompt + response + [pad_id] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
    attention_mask = torch.tensor(attention)
    return Collated(
        input_ids=torch.tensor(ids),
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        **padded_responses(samples, pad_id),
    )


def padded_responses(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """``response_ids``, ``response_mask`` and ``old_logprobs`` right-padded to ``[B, R]``, and ``advantages``
    ``[B]``; a masked (padding) sample's mask is all zero, and a trajectory's is zero on the environment's tokens
    (``Completion.model_mask``)."""
    length = max(len(s.completion.token_ids) for s in samples)
    responses, mask, old = [], [], []
    for s in samples:
        response = list(s.completion.token_ids)
        right = length - len(response)
        responses.append(response + [pad_id] * right)
        by_model = s.completion.model_mask or (1,) * len(response)  # environment tokens are context only
        mask.append([0.0 if s.masked else float(m) for m in by_model] + [0.0] * right)
        old.append(list(s.completion.logprobs) + [0.0] * right)
    return {
        "response_ids": torch.tensor(responses),
        "response_mask": torch.tensor(mask),
        "old_logprobs": torch.tensor(old),
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
    }


def num_tokens(sample: Sample) -> int:
    return len(sample.prompt_ids) + len(sample.completion.token_ids)


def response_sample(prompt_ids: tuple[int, ...], response_ids: tuple[int, ...]) -> Sample:
    """A given (not sampled) response as a ``Sample``, for scoring its logprobs."""
    completion = Completion(response_ids, (0.0,) * len(response_ids), "stop", 0, "")
    return Sample(prompt_ids=prompt_ids, completion=completion, advantage=0.0)


def pair_lengths(pairs: list[PreferencePair]) -> torch.Tensor:
    """``[2, n]`` token counts of the chosen (row 0) and rejected (row 1) responses."""
    return torch.tensor([[len(p.chosen_ids) for p in pairs], [len(p.rejected_ids) for p in pairs]])


def padding_sample(like: Sample) -> Sample:
    """A copy of ``like`` that contributes nothing: zero advantage, one token, and masked out."""
    completion = replace(like.completion, token_ids=like.completion.token_ids[:1], logprobs=(0.0,), model_mask=None)
    return Sample(prompt_ids=like.prompt_ids, completion=completion, advantage=0.0, masked=True)


def by_rank(items: list[T], num_ranks: int) -> list[list[T]]:
    """Round-robin shares of ``items``, one per rank; ``items[i]`` goes to rank ``i % num_ranks``."""
    return [items[rank::num_ranks] for rank in range(num_ranks)]


def shard(samples: list[Sample], num_shards: int) -> list[list[Sample]]:
    """Split samples across ranks, longest first onto the lightest rank; no rank is left empty."""
    shards: list[list[Sample]] = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    for s in sorted(samples, key=num_tokens, reverse=True):
        lightest = loads.index(min(loads))
        shards[lightest].append(s)
        loads[lightest] += num_tokens(s)
    for part in shards:
        if not part:
            part.append(padding_sample(samples[0]))
    return shards


def micro_batches(samples: list[Sample], token_budget: int) -> list[list[Sample]]:
    """Group samples so that each group's padded size ``len(group) * max_len`` fits the budget.

    A sample longer than the budget gets a micro-batch of its own.
    """
    groups: list[list[Sample]] = []
    current: list[Sample] = []
    longest = 0
    for s in sorted(samples, key=num_tokens):
        longest_if_added = max(longest, num_tokens(s))
        if current and longest_if_added * (len(current) + 1) > token_budget:
            groups.append(current)
            current, longest_if_added = [], num_tokens(s)
        current.append(s)
        longest = longest_if_added
    if current:
        groups.append(current)
    return groups
