"""How every benchmark ends: its figures in a JSON file in the repo, and as one JSON line."""

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def accelerator() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"


def command_line() -> str:
    """The command that started this process, as the ``rlstack`` command it amounts to.

    ``rlstack bench gemm --repeats 5``, ``python -m rlstack.cli bench gemm --repeats 5`` (as
    ``make bench`` runs it) and ``python -m rlstack.bench.gemm --repeats 5`` all read
    ``rlstack bench gemm --repeats 5``; anything else (pytest calling a bench's function) as typed.
    """
    script = Path(sys.argv[0]).resolve()
    bench_dir = Path(__file__).resolve().parent
    if script.name == "rlstack" or script == bench_dir.parent / "cli.py":
        return shlex.join(["rlstack", *sys.argv[1:]])
    if script.parent == bench_dir:
        return shlex.join(["rlstack", "bench", script.stem.replace("_", "-"), *sys.argv[1:]])
    return shlex.join(sys.orig_argv)


def record_result(bench: str, figures: dict[str, Any], targets_met: dict[str, bool], output: Path) -> None:
    """Write ``figures`` with the date, machine, command line and targets to ``output``; print them as one line."""
    record = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {accelerator()}",
        "command": command_line(),
        **figures,
        "targets_met": targets_met,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
