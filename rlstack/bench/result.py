"""How every benchmark ends: its figures in a JSON file in the repo, and as one JSON line."""

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def accelerator() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"


def record_result(
    bench: str, command: str, figures: dict[str, Any], targets_met: dict[str, bool], output: Path
) -> None:
    """Write ``figures`` with the date, the machine and the targets to ``output``; print them as one line."""
    record = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {accelerator()}",
        "command": command,
        **figures,
        "targets_met": targets_met,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
