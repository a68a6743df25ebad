"""The policy's forward pass over each training layout: logits, or the sampled tokens' scores, at the response
positions only."""

from types import MethodType

import torch
from torch.nn.attention.flex_attention import BlockMask
from transformers import PreTrainedModel

from rlstack.algorithms import chunked_token_logprobs
from rlstack.data.batching import Collated
from rlstack.data.shared_prompt import SharedPromptRow

SCORE_METHOD = "score_responses"
"""The method ``add_response_scoring`` gives a model; FSDP2 must know it as a forward method."""


def padded_response_logits(model: torch.nn.Module, batch: Collated, device: torch.device) -> torch.Tensor:
    """``[B, R, V]`` logits predicting each response token of a padded batch."""
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        logits_to_keep=batch.response_ids.shape[1] + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]


def add_response_scoring(model: PreTrainedModel, chunk_tokens: int) -> None:
    """Give a causal LM a ``score_responses`` method: ``shared_prompt_scores`` without ``[N, V]`` logits."""

    def score_responses(
        self: PreTrainedModel,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | BlockMask,
        logit_positions: torch.Tensor,
        token_ids: torch.Tensor,
        temperature: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        )
        hidden = out.last_hidden_state[0, logit_positions]  # [N, H]
        return chunked_token_logprobs(hidden, self.get_output_embeddings(), token_ids, temperature, chunk_tokens)

    setattr(model, SCORE_METHOD, MethodType(score_responses, model))


def shared_prompt_scores(
    model: torch.nn.Module,
    row: SharedPromptRow,
    device: torch.device,
    attention_mask: torch.Tensor | BlockMask,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N]`` logprobs (differentiable) and ``[N]`` entropies at ``temperature`` of each response token of a
    shared-prompt row, in row order, from a model given ``add_response_scoring``; ``attention_mask`` is the
    row's, built on ``device``."""
    return getattr(model, SCORE_METHOD)(
        row.input_ids.to(device),
        row.position_ids.to(device),
        attention_mask,
        row.logit_positions.to(device),
        row.token_ids.to(device),
        temperature,
    )
