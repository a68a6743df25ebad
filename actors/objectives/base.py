"""What an algorithm gives the trainer rank's one loop, and what the loop lends it.

The loop (``actors.trainer.TrainerWorker.step``): the objective cuts this rank's share of
the batch into micro-batches; the ranks align their counts with the objective's padding
micro-batch (whose loss counts for nothing), so every rank runs the same collectives; for
each micro-batch the objective returns its loss (its share of the whole batch's loss) and
a ``[num_sums]`` float64 tensor of sums; the loop runs backward, the optimizer step, an
all-reduce of the sums, and asks the objective to turn the sums into metrics.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from rlstack.data.attention import Attention

T = TypeVar("T")
Align = Callable[[list[T], T], list[T]]
"""``align(micro_batches, padding)``: ``micro_batches`` plus ``padding`` up to the largest count of any rank."""


@dataclass(frozen=True)
class Policy:
    """The models an objective computes with, and where."""

    model: torch.nn.Module
    """The policy being trained."""
    reference: torch.nn.Module | None
    """A frozen copy of the initial policy, when the recipe needs one online (KL, online DPO)."""
    device: torch.device
    pad_id: int
    """The tokenizer's padding token."""
    attention: Attention = "sdpa"
    """The attention kernels the models run with (``trainer.attention``), which decides the masks' form."""


class Objective(Protocol):
    """One training algorithm's loss over a rank's share of a batch."""

    @property
    def sum_names(self) -> tuple[str, ...]:
        """What each entry of a micro-batch's sums holds."""
        ...

    def micro_batches(self, batch: Any) -> list[Any]:
        """This rank's share of ``batch`` in micro-batches under ``trainer.micro_batch_tokens``."""
        ...

    def padding(self, batch: Any) -> Any:
        """A micro-batch whose loss and sums are zero, for a rank with fewer micro-batches than another."""
        ...

    def loss(self, policy: Policy, batch: Any, micro_batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of ``micro_batch``, one of ``batch``'s (its share of the batch's, with the batch's normalisers),
        and its ``[len(sum_names)]`` float64 sums."""
        ...

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's metrics from the sums over all micro-batches of all ranks."""
        ...


@runtime_checkable
class ItemLogprobs(Protocol):
    """An objective that scores each item of a batch under the policy (GRPO's samples, DPO's pairs)."""

    def logprobs(self, policy: Policy, data: list[Any], align: Align) -> list[Any]:
        """The policy's logprobs of each item, in order."""
        ...


@runtime_checkable
class HeldOutLoss(Protocol):
    """An objective with a held-out loss of its own (SFT)."""

    def evaluate(self, policy: Policy, data: list[Any], align: Align) -> torch.Tensor:
        """Sums over this rank's share, to all-reduce."""
        ...

    def evaluation_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """The metrics from the sums over all ranks."""
        ...


def stacked(*values: torch.Tensor) -> torch.Tensor:
    """``[len(values)]`` float64 sums of a micro-batch, detached."""
    return torch.stack([v.detach().double() for v in values])
