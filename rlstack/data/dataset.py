"""Prompt datasets from local files: field mapping, length filtering, splits.

A file is scanned once, streaming: each row is mapped to a ``Prompt``, rendered through
the chat template and measured. What is kept is an array of row keys (8 bytes a row),
not the rows; a prompt is read again from the file when the sampler asks for it.
"""

import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from rlstack.config import DataSection
from rlstack.data.arithmetic import make_splits
from rlstack.data.chat import render_prompt
from rlstack.data.prompts import Message, Prompt, PromptSet
from rlstack.data.sources import RowSource, open_rows

REWARD_KEYWORDS = frozenset({"prompt", "completion", "completion_tokens", "finish_reason"})
"""Keywords the reward API sets itself; columns of these names are not passed as fields."""
ROLES = frozenset({"system", "user", "assistant"})
PROGRESS_EVERY_S = 10.0
T = TypeVar("T")


class RowError(ValueError):
    """A row that cannot become a prompt; the message is the reason, e.g. ``missing key 'answer'``."""


def lookup(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, where ``a.b`` reaches into nested mappings unless ``a.b`` is a column itself."""
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RowError(f"missing key {key!r}")
        node = node[part]
    return node


def as_messages(value: Any) -> tuple[Message, ...]:
    """Text becomes one user turn; a list of ``{"role", "content"}`` is checked and kept."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list | tuple) and value:
        for message in value:
            if not (
                isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)
            ):
                raise RowError(f"chat message is not {{'role': system|user|assistant, 'content': str}} ({message!r})")
        if any(m["role"] == "user" for m in value):
            return tuple({"role": m["role"], "content": m["content"]} for m in value)
        raise RowError("chat messages hold no user message")
    raise RowError(f"prompt is {type(value).__name__}, not text or a list of chat messages")


@dataclass(frozen=True)
class RowMapping:
    """Maps a file's row to a ``Prompt`` as ``data.prompt_key``, ``prompt_template`` and ``answer_key`` say."""

    prompt_key: str
    prompt_template: str | None
    answer_key: str | None

    def __call__(self, row: dict[str, Any]) -> Prompt:
        if self.prompt_template is None:
            messages = as_messages(lookup(row, self.prompt_key))
        else:
            try:
                messages = as_messages(self.prompt_template.format_map(row))
            except (KeyError, IndexError) as exc:
                raise RowError(f"missing key {exc.args[0]!r} (in data.prompt_template)") from None
        fields = {k: v for k, v in row.items() if k not in REWARD_KEYWORDS and k != self.prompt_key}
        if self.answer_key is not None:
            fields["answer"] = lookup(row, self.answer_key)
        return Prompt(messages, fields)


@dataclass(frozen=True)
class FilePrompts:
    """Prompts of one source by index, each read from the source when asked for."""

    rows: RowSource
    keys: np.ndarray
    """``[N]`` int64 keys of the kept rows."""
    mapping: RowMapping

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Prompt:
        return self.mapping(self.rows.read(int(self.keys[index])))


@dataclass(frozen=True)
class ScanReport:
    """What a scan of one source kept and left out."""

    path: str
    num_rows: int
    """Rows read (blank lines aside), up to ``data.max_rows``."""
    num_kept: int
    num_too_long: int
    """Prompts over ``data.max_prompt_tokens``."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Malformed rows skipped, by reason."""
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    """Percentiles (``p50``, ``p90``, ``p99``, ``max``) of the kept prompts' token lengths."""


def data_metrics(num_train: int, num_held_out: int, reports: list[ScanReport]) -> dict[str, int]:
    """Counts logged at the start of a run."""
    return {
        "data/num_train": num_train,
        "data/num_held_out": num_held_out,
        "data/num_too_long": sum(r.num_too_long for r in reports),
        "data/num_malformed": sum(sum(r.skipped.values()) for r in reports),
    }


class RunData(Protocol):
    """What a controller needs of its data, whatever the algorithm."""

    @property
    def train(self) -> Any:
        """Items the sampler draws training batches from (prompts, conversations, pairs)."""

    @property
    def held_out(self) -> Any:
        """Held-out items of the same kind."""

    @property
    def held_out_prompts(self) -> list[Prompt]:
        """Prompts for held-out task accuracy; empty when there is no task to score."""

    def metrics(self) -> dict[str, int]:
        """Counts logged at the start of a run."""


@dataclass(frozen=True)
class PromptData:
    """The prompts of a run: training, held-out, and how each file was read."""

    train: PromptSet
    held_out: list[Prompt]
    reports: list[ScanReport]

    @property
    def held_out_prompts(self) -> list[Prompt]:
        return self.held_out

    def metrics(self) -> dict[str, int]:
        return data_metrics(len(self.train), len(self.held_out), self.reports)


@dataclass
class Tally:
    """Counts of one scan, turned into a ``ScanReport`` (or an error) at its end."""

    path: str
    num_rows: int = 0
    num_too_long: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    lengths: array = field(default_factory=lambda: array("l"))
    """Token lengths of the kept items."""

    def keep(self, length: int, limit: int) -> bool:
        """Count an item of ``length`` tokens; true if it fits ``limit``."""
        if length > limit:
            self.num_too_long += 1
            return False
        self.lengths.append(length)
        return True

    def report(self, data: DataSection) -> ScanReport:
        """``ValueError`` when nothing is left to train on."""
        if self.num_rows == 0:
            raise ValueError(f"data: {self.path!r} holds no rows")
        if not self.lengths and not self.num_too_long:
            raise ValueError(f"data: every row of {self.path!r} is malformed: {dict(self.skipped)}")
        if not self.lengths:
            raise ValueError(
                f"data: all {self.num_too_long} rows of {self.path!r} are longer than "
                f"data.max_prompt_tokens={data.max_prompt_tokens}"
            )
        sizes = np.asarray(self.lengths)
        percentiles = {f"p{q}": int(np.percentile(sizes, q)) for q in (50, 90, 99)} | {"max": int(sizes.max())}
        return ScanReport(self.path, self.num_rows, len(sizes), self.num_too_long, dict(self.skipped), percentiles)


def convert_rows(
    rows: RowSource, convert: Callable[[dict[str, Any]], T], data: DataSection, tally: Tally
) -> Iterator[tuple[int, T]]:
    """``(key, convert(row))`` for each row up to ``data.max_rows``; a row that cannot be converted is an
    error naming its place, or skipped and tallied when ``data.skip_malformed``."""
    last_report = time.monotonic()
    for key, where, row, error in rows.scan():
        if data.max_rows is not None and tally.num_rows == data.max_rows:
            return
        tally.num_rows += 1
        if time.monotonic() - last_report > PROGRESS_EVERY_S:
            print(f"data: {tally.num_rows} rows of {rows.path} read", flush=True)
            last_report = time.monotonic()
        try:
            if error is not None:
                raise RowError(error)
            item = convert(row)  # type: ignore[arg-type]  # row is set when error is None
        except RowError as exc:
            if not data.skip_malformed:
                raise ValueError(f"{where}: {exc}; set data.skip_malformed=true to skip such rows") from None
            tally.skipped[str(exc).split(" (")[0]] += 1
            continue
        yield key, item


def scan(
    rows: RowSource, mapping: RowMapping, tokenizer: PreTrainedTokenizerBase, data: DataSection
) -> tuple[np.ndarray, ScanReport]:
    """Keys of the rows that map to a prompt of at most ``data.max_prompt_tokens`` tokens."""
    keys, tally = array("q"), Tally(rows.path)
    for key, prompt in convert_rows(rows, mapping, data, tally):
        if tally.keep(len(render_prompt(tokenizer, prompt.messages, data.system_prompt)), data.max_prompt_tokens):
            keys.append(key)
    return np.asarray(keys, dtype=np.int64), tally.report(data)


def held_out_source(data: DataSection) -> tuple[str, str, str] | None:
    """Where held-out rows come from, ``(path, split, recipe key)``; ``None`` means a fraction of ``data.path``."""
    if data.eval_path is None and data.eval_split is None:
        return None
    assert data.path is not None
    key = "data.eval_path" if data.eval_path is not None else "data.path"
    return data.eval_path or data.path, data.eval_split or data.split, key


def split_order(num_rows: int, data: DataSection, hold_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out rows: permuted from ``data.seed`` (unless ``data.shuffle`` is off),
    the first ``eval_fraction`` of them held out when ``hold_out``."""
    order = np.random.default_rng(data.seed).permutation(num_rows) if data.shuffle else np.arange(num_rows)
    if not hold_out:
        return order, order[:0]
    num_eval = max(1, round(data.eval_fraction * num_rows))
    if num_eval >= num_rows:
        raise ValueError(f"data.eval_fraction={data.eval_fraction} leaves no training rows of {num_rows}")
    return order[num_eval:], order[:num_eval]


def load_prompt_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> PromptData:
    """Training and held-out prompts as the recipe's ``data`` section describes; ``ValueError`` if unusable."""
    if data.path is None:
        train, held_out = make_splits(data.digits, data.operator, data.num_train, data.num_eval, data.seed)
        return PromptData(train, held_out, [])
    mapping = RowMapping(data.prompt_key, data.prompt_template, data.answer_key)
    rows = open_rows(data.path, data.split)
    keys, report = scan(rows, mapping, tokenizer, data)
    reports = [report]
    source = held_out_source(data)
    train_order, held_order = split_order(len(keys), data, hold_out=source is None)
    if source is None:
        evaluated = FilePrompts(rows, keys[held_order], mapping)
    else:
        eval_rows = open_rows(*source)
        eval_keys, eval_report = scan(eval_rows, mapping, tokenizer, data)
        reports.append(eval_report)
        evaluated = FilePrompts(eval_rows, eval_keys, mapping)
    held_out = [evaluated[i] for i in range(min(len(evaluated), data.num_eval))]
    return PromptData(FilePrompts(rows, keys[train_order], mapping), held_out, reports)
