"""Peak memory of everything a command starts, sampled from outside it."""

import os
import threading

import psutil


class PeakMemory:
    """Samples the summed PSS of all processes that did not exist at construction.

    PSS (proportional set size) splits shared pages between the processes that map
    them, so Ray's shared object store and shared libraries are counted once.
    """

    def __init__(self, interval_s: float = 2.0):
        self.baseline = set(psutil.pids())
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

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

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.sample())

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30
