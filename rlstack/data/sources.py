"""Rows of a local dataset, read lazily: JSONL, Parquet, or a ``datasets.save_to_disk`` directory.

A source is scanned once, streaming, and then read row by row by a key that the scan
returned: a byte offset into a JSONL file, a row index into an Arrow table. Nothing
holds the whole file in memory; Parquet and saved datasets are memory-mapped Arrow.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

SCAN_BATCH = 1024


class ScannedRow(NamedTuple):
    """One row as a scan meets it: a readable row, or the reason it is malformed."""

    key: int
    """What ``read`` takes to fetch the row again."""
    where: str
    """``file:line`` or ``dir[row i]``, for error messages."""
    row: dict[str, Any] | None
    """The row's fields; ``None`` when malformed."""
    error: str | None
    """Why the row is malformed, e.g. ``malformed JSON``."""


class RowSource(Protocol):
    path: str

    def scan(self) -> Iterator[ScannedRow]: ...

    def read(self, key: int) -> dict[str, Any]: ...


class JsonlRows:
    """A JSON Lines file: one object per line; blank lines are ignored."""

    def __init__(self, path: str):
        self.path = path

    def scan(self) -> Iterator[ScannedRow]:
        offset = 0
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                key, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield ScannedRow(key, where, None, f"malformed JSON ({exc})")
                    continue
                if isinstance(row, dict):
                    yield ScannedRow(key, where, row, None)
                else:
                    yield ScannedRow(key, where, None, f"not a JSON object ({type(row).__name__})")

    def read(self, key: int) -> dict[str, Any]:
        with open(self.path, "rb") as file:
            file.seek(key)
            return json.loads(file.readline())


class ArrowRows:
    """A Parquet file or a saved ``datasets`` directory, memory-mapped through ``datasets``."""

    def __init__(self, path: str, split: str):
        import datasets

        datasets.disable_progress_bars()
        if Path(path).is_dir():
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"data: {path!r} has splits {sorted(loaded)}, not {split!r}")
                loaded = loaded[split]
        else:
            loaded = datasets.Dataset.from_parquet(path)
        assert isinstance(loaded, datasets.Dataset), type(loaded)
        self.path = path
        self.dataset = loaded

    def scan(self) -> Iterator[ScannedRow]:
        for start in range(0, len(self.dataset), SCAN_BATCH):
            columns = self.dataset[start : start + SCAN_BATCH]
            for offset, values in enumerate(zip(*columns.values(), strict=True)):
                index = start + offset
                yield ScannedRow(index, f"{self.path}[row {index}]", dict(zip(columns, values, strict=True)), None)

    def read(self, key: int) -> dict[str, Any]:
        return self.dataset[key]


def open_rows(path: str, split: str, key: str = "data.path") -> RowSource:
    """The source at ``path``, chosen by its kind; ``key`` names the recipe key in errors."""
    location = Path(path)
    if not location.exists():
        raise ValueError(f"{key}: {path!r} does not exist")
    if location.is_dir() or location.suffix == ".parquet":
        return ArrowRows(path, split)
    if location.suffix == ".jsonl":
        return JsonlRows(path)
    raise ValueError(f"{key}: {path!r} is not a .jsonl file, a .parquet file or a datasets.save_to_disk directory")
