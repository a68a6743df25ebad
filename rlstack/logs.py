"""Where a quiet run's library logs go: one file per process under ``<run_dir>/logs/``.

With ``tracking.console: quiet`` the console shows rlstack's own lines only. The driver
(``rlstack train``) writes Python logging and warnings to ``logs/driver.log`` (``DriverLogs``)
and tells Ray not to forward the actors' output; each actor sends its stdout and stderr, C libraries'
included, to its own ``logs/<role>-<i>.log`` as it starts. The few library warnings a user
can act on are matched in those files and shown once, in rlstack's words (``LogWatcher``).
"""

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

LOG_DIR_ENV = "RLSTACK_LOG_DIR"
"""Set in the actors' environment (through the job's runtime env) by a quiet driver: where they write."""
LOGS = "logs"
"""The run directory's subdirectory for library logs."""

NOTABLE = [
    (
        re.compile(r"(libtcmalloc|libiomp) is not found in LD_PRELOAD"),
        "vLLM runs without tcmalloc/libiomp preloaded, its slower allocator path: set LD_PRELOAD as "
        "https://docs.vllm.ai/en/latest/getting_started/installation/cpu.html describes for a faster engine",
    ),
]
"""Library log lines that matter to a user, and what rlstack says about them (once per run)."""


def logs_dir(run_dir: Path) -> Path:
    return run_dir / LOGS


class DriverLogs:
    """A quiet driver's Python logging and warnings: held in memory from construction, then written to
    ``logs/driver.log`` once the run directory is known and accepted (``open``), so a recipe refused at the start
    leaves no directory. Ray's and transformers' own console handlers (their loggers do not propagate) pass only
    errors from then on."""

    LIBRARY_LOGGERS = ("ray", "transformers")

    def __init__(self) -> None:
        self.handler: logging.Handler = logging.handlers.MemoryHandler(
            capacity=100_000, flushLevel=logging.CRITICAL + 1
        )
        logging.getLogger().setLevel(logging.INFO)
        logging.captureWarnings(True)
        self._attach()

    def _attach(self) -> None:
        for logger in (logging.getLogger(), *map(logging.getLogger, self.LIBRARY_LOGGERS)):
            for handler in logger.handlers:
                if handler is not self.handler:
                    handler.setLevel(logging.ERROR)
            if self.handler not in logger.handlers:
                logger.addHandler(self.handler)

    def open(self, run_dir: Path) -> dict[str, str]:
        """Write what was held, and all that follows, to ``logs/driver.log``; returns the environment variables the
        actors need (``LOG_DIR_ENV``) to write their own files. Call it after importing Ray, which installs its own
        console handler."""
        directory = logs_dir(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(directory / "driver.log")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        buffer = self.handler
        assert isinstance(buffer, logging.handlers.MemoryHandler), "DriverLogs opened twice"
        self._attach()
        buffer.setTarget(file)
        buffer.flush()
        for logger in (logging.getLogger(), *map(logging.getLogger, self.LIBRARY_LOGGERS)):
            logger.removeHandler(buffer)
            logger.addHandler(file)
        self.handler = file
        return {LOG_DIR_ENV: str(directory)}


def capture_output(role: str, index: int | None = None) -> None:
    """In an actor of a quiet run, send stdout and stderr (file descriptors 1 and 2) to ``logs/<role>-<index>.log``,
    by default the first free index; elsewhere do nothing."""
    directory = os.environ.get(LOG_DIR_ENV)
    if not directory:
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    if index is None:
        index = 0
        while True:
            try:  # O_EXCL: two actors starting at once never share a file
                fd = os.open(Path(directory) / f"{role}-{index}.log", flags | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                index += 1
    else:
        fd = os.open(Path(directory) / f"{role}-{index}.log", flags, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class LogWatcher:
    """Reads what was appended to ``logs/*.log`` since the last call and names each ``NOTABLE`` finding once."""

    def __init__(self, run_dir: Path):
        self.directory = logs_dir(run_dir)
        self.offsets: dict[Path, int] = {}
        self.said: set[str] = set()

    def new_findings(self) -> list[str]:
        findings = []
        for path in sorted(self.directory.glob("*.log")):
            start = self.offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(start)
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time, whole
            self.offsets[path] = start + len(complete)
            text = complete.decode(errors="replace")
            for pattern, message in NOTABLE:
                if message not in self.said and pattern.search(text):
                    self.said.add(message)
                    findings.append(f"{message} (logs/{path.name})")
        return findings
