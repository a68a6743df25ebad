"""SFT conversations and DPO preference pairs: from local files or the built-in arithmetic task.

Both are tokenized once at start-up through the chat template (token ids are small next
to the text), with the same row handling as prompts: line-numbered errors, skipping
and counting malformed rows, a length cap, and a held-out split.
"""

import random
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from transformers import PreTrainedTokenizerBase

from rlstack.config import DataSection
from rlstack.data.arithmetic import make_splits
from rlstack.data.conversations import instruction_to_messages, tokenize_conversation
from rlstack.data.dataset import (
    RowError,
    ScanReport,
    Tally,
    as_messages,
    convert_rows,
    data_metrics,
    held_out_source,
    lookup,
    split_order,
)
from rlstack.data.prompts import Message, Prompt
from rlstack.data.sources import open_rows
from rlstack.types import PreferencePair, SFTExample

WRONG_ANSWER_OFFSETS = (-3, -2, -1, 1, 2, 3)
WRONG_ANSWER_STYLES = ("{working} = {wrong}", "The answer is {wrong}.")
"""The embedded model's own two answer styles, worked and plain, for the rejected response."""
T = TypeVar("T")


@dataclass(frozen=True)
class Split(Generic[T]):
    """Training and held-out items, and how each file was read."""

    train: list[T]
    held_out: list[T]
    reports: list[ScanReport]
    held_out_prompts: list[Prompt]
    """The built-in task's held-out prompts, for task accuracy; empty for file data."""

    def metrics(self) -> dict[str, int]:
        return data_metrics(len(self.train), len(self.held_out), self.reports)


def sft_messages(row: dict[str, Any]) -> list[Message]:
    """An SFT row as a chat: ``{"messages": [...]}`` (OpenAI format) or ``{"instruction", "input", "output"}``."""
    if "messages" in row:
        messages = list(as_messages(row["messages"]))
        if not any(m["role"] == "assistant" for m in messages):
            raise RowError("messages hold no assistant turn to learn from")
        return messages
    if "instruction" in row:
        try:
            return instruction_to_messages(row)
        except ValueError as exc:
            raise RowError(str(exc)) from None
    raise RowError("missing key 'messages' (or 'instruction')")


def response_text(value: Any, key: str) -> str:
    """A response as text, from a string or a one-message assistant list (TRL's conversational format)."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and value[0].get("role") == ("assistant")
    ):
        return str(value[0].get("content"))
    raise RowError(f"{key!r} is neither text nor one assistant message")


def pair_of(tokenizer: PreTrainedTokenizerBase, messages: list[Message], chosen: str, rejected: str) -> PreferencePair:
    """Tokenize both responses after the same prompt; each response is its assistant turn's trained tokens."""
    responses = []
    for text in (chosen, rejected):
        example = tokenize_conversation(tokenizer, [*messages, {"role": "assistant", "content": text}])
        start = example.loss_mask.index(1)
        responses.append(tuple(t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if m))
        prompt_ids = example.input_ids[:start]
    return PreferencePair(prompt_ids, responses[0], responses[1])


def with_system(messages: list[Message], system_prompt: str | None) -> list[Message]:
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def arithmetic_answers(data: DataSection) -> tuple[list[Prompt], list[Prompt]]:
    return make_splits(data.digits, data.operator, data.num_train, data.num_eval, data.seed)


def builtin_sft(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Split[SFTExample]:
    """Arithmetic prompts with correct worked answers, ``a + b = result``."""
    train, held_out = arithmetic_answers(data)

    def example(prompt: Prompt) -> SFTExample:
        chat = [*prompt.messages, {"role": "assistant", "content": prompt.fields["solution"]}]
        return tokenize_conversation(tokenizer, with_system(chat, data.system_prompt))

    return Split([example(p) for p in train], [example(p) for p in held_out], [], held_out)


def builtin_pairs(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Split[PreferencePair]:
    """Arithmetic prompts with the correct worked answer chosen over a wrong one (off by 1 to 3), worked or
    plain at random (``WRONG_ANSWER_STYLES``), from ``data.seed``."""
    train, held_out = arithmetic_answers(data)
    rng = random.Random(data.seed)

    def pair(prompt: Prompt) -> PreferencePair:
        solution, answer = prompt.fields["solution"], prompt.fields["answer"]
        working = solution.rpartition(" = ")[0]
        wrong = rng.choice(WRONG_ANSWER_STYLES).format(working=working, wrong=answer + rng.choice(WRONG_ANSWER_OFFSETS))
        return pair_of(tokenizer, with_system(list(prompt.messages), data.system_prompt), solution, wrong)

    return Split([pair(p) for p in train], [pair(p) for p in held_out], [], held_out)


def load_split(data: DataSection, convert: Any, length: Any) -> Split[T]:
    """Items of ``data.path`` (and ``eval_path``/``eval_split``, else an ``eval_fraction``), converted and capped."""
    assert data.path is not None

    def read(path: str, split: str, key: str) -> tuple[list[T], ScanReport]:
        rows, items, tally = open_rows(path, split, key), [], Tally(path)
        for _, item in convert_rows(rows, convert, data, tally):
            if tally.keep(length(item), data.max_prompt_tokens):
                items.append(item)
        return items, tally.report(data)

    items, report = read(data.path, data.split, "data.path")
    source = held_out_source(data)
    train_order, held_order = split_order(len(items), data, hold_out=source is None)
    if source is None:
        held_out, reports = [items[i] for i in held_order], [report]
    else:
        held_out, eval_report = read(*source)
        reports = [report, eval_report]
    return Split([items[i] for i in train_order], held_out[: data.num_eval], reports, [])


def load_sft_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Split[SFTExample]:
    if data.path is None:
        return builtin_sft(data, tokenizer)

    def convert(row: dict[str, Any]) -> SFTExample:
        return tokenize_conversation(tokenizer, with_system(sft_messages(row), data.system_prompt))

    return load_split(data, convert, lambda example: len(example.input_ids))


def load_preference_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Split[PreferencePair]:
    if data.path is None:
        return builtin_pairs(data, tokenizer)

    def convert(row: dict[str, Any]) -> PreferencePair:
        messages = with_system(list(as_messages(lookup(row, data.prompt_key))), data.system_prompt)
        chosen = response_text(lookup(row, "chosen"), "chosen")
        rejected = response_text(lookup(row, "rejected"), "rejected")
        return pair_of(tokenizer, messages, chosen, rejected)

    return load_split(
        data, convert, lambda pair: len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
    )
