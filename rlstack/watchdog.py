"""Ends the local Ray a run started when the run's driver dies without stopping it.

``ray.init()`` without an address starts a head (GCS, raylet, monitors) as the driver's children, and
``ray.shutdown()`` stops it when the driver exits. A driver that is SIGKILLed, or killed by the kernel's OOM
killer, skips that: the head and its workers would stay behind, holding memory, cores and ports. ``Watchdog``
starts a process that waits on a pipe whose write end only the driver holds. However the driver dies, the
watchdog then reads end-of-file and SIGKILLs the head's processes and everything they started (workers and
agents: with Ray 2.60 the GCS and raylet end with the driver, its agents do not). A driver that stops
Ray itself stands the watchdog down first.

    python -m rlstack.watchdog PID [PID ...]   # run by Watchdog, not by hand
"""

import contextlib
import os
import select
import signal
import subprocess
import sys

STAND_DOWN = b"done"
"""What the driver writes once it has stopped Ray itself."""
POLL_S = 1.0
"""How often the watchdog looks for the head's new descendants (workers, agents)."""


def head_processes() -> list[int]:
    """The processes of the Ray head this driver started (``ray.init()`` without an address)."""
    import ray._private.worker

    node = ray._private.worker._global_node
    if node is None:
        return []
    return [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]


class Watchdog:
    """Kills ``pids`` when this process dies, unless ``stand_down`` was called first."""

    def __init__(self, pids: list[int]):
        read, self.write = os.pipe()  # both ends non-inheritable: no later child of the driver holds the write end
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlstack.watchdog", *map(str, pids)], stdin=read, start_new_session=True
        )
        os.close(read)

    def stand_down(self) -> None:
        os.write(self.write, STAND_DOWN)
        os.close(self.write)
        self.process.wait()


def main(argv: list[str]) -> int:
    """Until end-of-file on stdin, track the descendants of the processes ``argv`` names every ``POLL_S``
    seconds: the head may die with its driver first, orphaning its agents and workers, which must still be
    known. Then, unless the driver stood it down, SIGKILL them all."""
    import psutil

    heads = []
    for pid in map(int, argv):
        with contextlib.suppress(psutil.NoSuchProcess):
            heads.append(psutil.Process(pid))
    known: dict[int, psutil.Process] = {}
    while not select.select([sys.stdin], [], [], POLL_S)[0]:
        for head in heads:
            with contextlib.suppress(psutil.NoSuchProcess):
                known |= {p.pid: p for p in [head, *head.children(recursive=True)]}
    if sys.stdin.buffer.read() == STAND_DOWN:  # returns once no process holds the write end
        return 0
    for process in known.values():  # psutil refuses a pid that a new process has taken since
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
