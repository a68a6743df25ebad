"""Whether a colocated engine must sleep while the trainer updates, decided from measured GPU memory.

An engine that shares a GPU with the trainer only needs to free its weights and KV cache
(LMDeploy's sleep level 2) when the update would not fit beside it. Sleeping and waking
cost more than the sync itself (0.8 s a step against 0.05 s for 270 MB on an H200), so
an engine stays awake whenever the memory measured after the last update says there is
room: the extra memory an update needs, times a margin, plus a reserve, must fit in what
is free on the device and what the trainer's allocator already holds unused.
"""

from dataclasses import dataclass

UPDATE_MARGIN = 1.5
"""The next update may need this much more than the last one did (longer responses, more samples kept)."""
RESERVE_GIB = 2.0
"""Left free besides: allocator fragmentation, the CUDA context and communicator buffers growing."""


@dataclass(frozen=True)
class GpuMemory:
    """One trainer rank's view of its GPU after an update, in GiB."""

    free_gib: float
    """Free on the whole device (``cudaMemGetInfo``): what neither the trainer nor the engine holds."""
    allocated_gib: float
    """This rank's live tensors between updates: weights, gradients, optimizer state."""
    reserved_gib: float
    """Held by this rank's caching allocator, live or not."""
    update_peak_gib: float
    """The most this rank had allocated during its last update."""

    @property
    def update_gib(self) -> float:
        """Memory an update needs beyond what is live between updates: activations, logits, temporaries."""
        return self.update_peak_gib - self.allocated_gib

    @property
    def available_gib(self) -> float:
        """Memory an update can take with the engine awake: the device's free memory and the allocator's unused
        cache."""
        return self.free_gib + self.reserved_gib - self.allocated_gib


def must_sleep(memory: GpuMemory) -> bool:
    """True when the next update, grown by ``UPDATE_MARGIN``, would not fit beside the awake engine with
    ``RESERVE_GIB`` to spare."""
    return memory.update_gib * UPDATE_MARGIN + RESERVE_GIB > memory.available_gib


def describe(memory: GpuMemory) -> str:
    return (
        f"{memory.available_gib:.1f} GiB available with the engine awake, "
        f"an update needs {memory.update_gib:.1f} GiB (last peak {memory.update_peak_gib:.1f} GiB)"
    )
