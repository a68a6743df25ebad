"""The policy's forward pass over each training layout: logits at the response positions only."""

import torch

from rlstack.data.batching import Collated
from rlstack.data.shared_prompt import SharedPromptRow


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


def shared_prompt_logits(
    model: torch.nn.Module, row: SharedPromptRow, device: torch.device, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, V]`` logits predicting each response token of a shared-prompt row, in row order; pass the row's
    ``attention_mask`` when it is already built on ``device`` (two models over one row)."""
    out = model(
        input_ids=row.input_ids.to(device),
        position_ids=row.position_ids.to(device),
        attention_mask=row.attention_mask(device) if attention_mask is None else attention_mask,
        logits_to_keep=row.logit_positions.to(device),
        use_cache=False,
    )
    return out.logits[0]
