"""Peak memory, sampled from a thread while a block of code runs."""

import os
import threading
from typing import Self

import psutil


class PeakSampler:
    """The largest ``sample()`` seen every ``interval_s`` between entering and leaving the block."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.sample())

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


class PeakMemory(PeakSampler):
    """The summed PSS of all processes that did not exist at construction: everything a command starts.

    PSS (proportional set size) splits shared pages between the processes that map
    them, so Ray's shared object store and shared libraries are counted once.
    """

    def __init__(self, interval_s: float = 2.0):
        super().__init__(interval_s)
        self.baseline = set(psutil.pids())

    def sample(self) -> int:
        total = 0
        for proc in psutil.process_iter():
            if proc.pid in self.baseline or proc.pid == os.getpid():
                continue
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return total


class ResidentGrowth(PeakSampler):
    """This process's resident memory above its level at construction."""

    def __init__(self, interval_s: float = 0.001):
        super().__init__(interval_s)
        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss

    def sample(self) -> int:
        return self.process.memory_info().rss - self.baseline


class DeviceMemoryPeak(PeakSampler):
    """Memory in use on the current GPU, by every process."""

    def __init__(self, interval_s: float = 0.005):
        super().__init__(interval_s)

    def sample(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free
