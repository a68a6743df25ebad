"""A weight bucket shared through CUDA IPC: one flat GPU tensor stays with the trainer, only its handle travels.

``share`` packs a bucket into one flat tensor and returns a picklable ``SharedBucket``
(torch's own IPC reduction of that tensor, plus the names and shapes it packs) with the
flat tensor, which the sender keeps alive until every engine has loaded it. An engine on
the same node calls ``open`` to get views into the sender's memory, with no copy.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import reduce_tensor

from rollout.weight_broadcast import Entry, flatten, unflatten


@dataclass(frozen=True)
class SharedBucket:
    rebuild: Callable[..., torch.Tensor]
    """torch's function that maps the handle back to a tensor in the receiving process."""
    args: tuple[Any, ...]
    """Its arguments: the IPC handle, the storage offset and size, dtype, device."""
    entries: list[Entry]
    """The packed tensors' names and shapes, in order."""

    def open(self) -> dict[str, torch.Tensor]:
        """``{name: view}`` into the sender's flat tensor."""
        return unflatten(self.rebuild(*self.args), self.entries)


def share(bucket: dict[str, torch.Tensor]) -> tuple[SharedBucket, torch.Tensor]:
    """The bucket packed into one flat tensor on its device, and the handle to it. Keep the tensor alive
    until every receiver has loaded the bucket."""
    flat = flatten(bucket)
    rebuild, args = reduce_tensor(flat)
    return SharedBucket(rebuild, args, [(name, tuple(t.shape)) for name, t in bucket.items()]), flat
