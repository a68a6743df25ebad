"""Weight sync by broadcast: trainer rank 0 sends each bucket as one flat tensor to every engine.

Trainer rank 0 and the engines form a process group of their own (gloo on CPU, NCCL on
GPU), outside the trainer's FSDP2 group, rendezvousing through a TCP store that rank 0
hosts. Both sides derive the same bucket plan from the model's parameter names and
shapes, so only tensor data crosses the wire: per bucket, ``[numel]`` elements in the
engine's dtype. A receiver holds one bucket at a time.
"""

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

Entry = tuple[str, tuple[int, ...]]
"""A parameter's name and shape."""


def plan_buckets(entries: Sequence[Entry], bucket_mb: int, element_size: int) -> list[list[Entry]]:
    """Parameters in order, cut into buckets that close once they reach ``bucket_mb`` MB (as the trainer's)."""
    limit = bucket_mb * 2**20
    buckets: list[list[Entry]] = [[]]
    size = 0
    for name, shape in entries:
        buckets[-1].append((name, shape))
        size += int(torch.Size(shape).numel()) * element_size
        if size >= limit:
            buckets.append([])
            size = 0
    return [bucket for bucket in buckets if bucket]


def flatten(bucket: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[sum of numels]``: the bucket's tensors end to end, in insertion order."""
    return torch.cat([tensor.reshape(-1) for tensor in bucket.values()])


def unflatten(flat: torch.Tensor, entries: Sequence[Entry]) -> dict[str, torch.Tensor]:
    """Views into ``flat`` with the planned names and shapes."""
    views, offset = {}, 0
    for name, shape in entries:
        numel = int(torch.Size(shape).numel())
        views[name] = flat[offset : offset + numel].view(shape)
        offset += numel
    if offset != flat.numel():
        raise ValueError(f"bucket holds {flat.numel()} elements, the plan {offset}")
    return views


class WeightGroup:
    """One member of the trainer-to-engines broadcast group; rank 0 is the trainer's rank 0."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: str, timeout_s: float = 600):
        store = dist.TCPStore(
            host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
        )
        self.device = torch.device(device)
        self.group: Any = (
            dist.ProcessGroupNCCL(store, rank, world_size, dist.ProcessGroupNCCL.Options())
            if self.device.type == "cuda"
            else dist.ProcessGroupGloo(store, rank, world_size, timedelta(seconds=timeout_s))
        )

    def broadcast(self, flat: torch.Tensor) -> None:
        """Rank 0 sends ``flat``; every other rank receives into it."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([flat], options).wait()

    def receive(self, plan: Sequence[Sequence[Entry]], dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
        """Each planned bucket as it arrives; the next is received only when the caller asks for it."""
        for entries in plan:
            flat = torch.empty(sum(int(torch.Size(s).numel()) for _, s in entries), dtype=dtype, device=self.device)
            self.broadcast(flat)
            yield unflatten(flat, entries)
