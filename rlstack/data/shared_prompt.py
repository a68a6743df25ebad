"""Shared-prompt rows for GRPO: each prompt once, followed by all of its responses.

A GRPO group's samples share one prompt. Padded side by side, ``k`` samples cost
``k * (P + R)`` tokens of forward and backward; laid out as one tree,
``prompt, response_1, ..., response_k``, they cost ``P + k * R``. Each response sees the
prompt and its own earlier tokens only, and its positions continue from the prompt, so
every token has exactly the context and positions it had alone: logprobs and gradients
are those of the padded layout, up to the order of float sums. The prompt's hidden state
at its last token predicts the first token of every response.

Several trees share a ``[1, L]`` row under the micro-batch token budget (first-fit
decreasing, ``rlstack.data.packing.pack``). The row must run with its mask
(``attention_mask``: dense for SDPA, a block mask for FlexAttention), built where the model
runs from two ``[L]`` vectors.
"""

from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from rlstack.data.attention import Attention, segment_mask
from rlstack.data.batching import padded_responses
from rlstack.data.packing import pack
from rlstack.types import Sample


@dataclass(frozen=True)
class SharedPromptRow:
    """``B`` samples in trees of one row of ``L`` tokens, and their responses padded to ``R``."""

    input_ids: torch.Tensor
    """``[1, L]`` each tree's prompt, then its responses."""
    position_ids: torch.Tensor
    """``[1, L]`` from 0 in each prompt; every response continues from its prompt's end."""
    tree_ids: torch.Tensor
    """``[L]`` the tree (``0 ..``) of each row token."""
    branch_ids: torch.Tensor
    """``[L]`` the sample (``0 .. B-1``) of each response token, -1 on prompt tokens."""
    logit_positions: torch.Tensor
    """``[N]`` for each of the ``N`` response tokens, the row position whose logits predict it."""
    token_rows: torch.Tensor
    """``[N]`` the sample (``0 .. B-1``) of each response token."""
    token_cols: torch.Tensor
    """``[N]`` its index in the sample's response."""
    response_ids: torch.Tensor
    """``[B, R]`` response tokens, right-padded."""
    response_mask: torch.Tensor
    """``[B, R]`` float, 1 on response tokens that count in the loss."""
    old_logprobs: torch.Tensor
    """``[B, R]`` engine logprobs of the response tokens."""
    advantages: torch.Tensor
    """``[B]``."""

    def attention_mask(
        self, device: torch.device | str = "cpu", attention: Attention = "sdpa"
    ) -> torch.Tensor | BlockMask:
        """A token sees its tree's prompt and the earlier tokens of its own response (``rlstack.data.attention``),
        built on ``device``: the dense ``[1, 1, L, L]`` bool for SDPA, or a FlexAttention ``BlockMask``."""
        return segment_mask(self.tree_ids, self.branch_ids, attention, device)

    @property
    def token_ids(self) -> torch.Tensor:
        """``[N]`` the response tokens, in row order."""
        return self.response_ids[self.token_rows, self.token_cols]

    def scatter(self, per_token: torch.Tensor) -> torch.Tensor:
        """``[N]`` values of the response tokens laid out as ``[B, R]``, zero on padding; differentiable."""
        out = per_token.new_zeros(self.response_ids.shape)
        return out.index_put((self.token_rows.to(out.device), self.token_cols.to(out.device)), per_token)


def trees(samples: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Samples grouped by prompt, in order of first appearance, each group cut so that
    ``P + sum(R_i)`` stays within ``max_tokens`` (a single sample may exceed it alone)."""
    groups: dict[tuple[int, ...], list[list[Sample]]] = {}
    for s in samples:
        cut = groups.setdefault(s.prompt_ids, [[]])
        if cut[-1] and tree_size(cut[-1] + [s]) > max_tokens:
            cut.append([])
        cut[-1].append(s)
    return [tree for cut in groups.values() for tree in cut]


def tree_size(tree: list[Sample]) -> int:
    """Tokens of a tree: the prompt once, then every response."""
    return len(tree[0].prompt_ids) + sum(len(s.completion.token_ids) for s in tree)


def shared_prompt_rows(samples: list[Sample], max_tokens: int) -> list[list[list[Sample]]]:
    """The rows of a batch, each a list of trees, packed first-fit decreasing under ``max_tokens``; a tree
    larger than the budget gets a row of its own."""
    all_trees = trees(samples, max_tokens)
    small = [t for t in all_trees if tree_size(t) <= max_tokens]
    rows = [[small[i] for i in indices] for indices in pack([tree_size(t) for t in small], max_tokens)]
    return rows + [[t] for t in all_trees if tree_size(t) > max_tokens]


def collate_shared_prompt(row: list[list[Sample]], pad_id: int) -> SharedPromptRow:
    """Lay out one row of trees (see ``SharedPromptRow``)."""
    ids: list[int] = []
    positions: list[int] = []
    tree_of: list[int] = []  # per row token: its tree
    branch: list[int] = []  # per row token: its sample, or -1 in a prompt
    logit_positions: list[int] = []
    token_rows: list[int] = []
    token_cols: list[int] = []
    b = 0
    for t, tree in enumerate(row):
        prompt = list(tree[0].prompt_ids)
        last_prompt_token = len(ids) + len(prompt) - 1
        ids += prompt
        positions += range(len(prompt))
        tree_of += [t] * len(prompt)
        branch += [-1] * len(prompt)
        for s in tree:
            response = list(s.completion.token_ids)
            start = len(ids)
            logit_positions += [last_prompt_token, *range(start, start + len(response) - 1)]
            token_rows += [b] * len(response)
            token_cols += range(len(response))
            ids += response
            positions += range(len(prompt), len(prompt) + len(response))
            tree_of += [t] * len(response)
            branch += [b] * len(response)
            b += 1
    return SharedPromptRow(
        input_ids=torch.tensor([ids]),
        position_ids=torch.tensor([positions]),
        tree_ids=torch.tensor(tree_of),
        branch_ids=torch.tensor(branch),
        logit_positions=torch.tensor(logit_positions),
        token_rows=torch.tensor(token_rows),
        token_cols=torch.tensor(token_cols),
        **padded_responses([s for tree in row for s in tree], pad_id),
    )
