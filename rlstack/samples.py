"""A small sample of each GRPO step's rollouts, kept for people to read: what the model wrote and what it scored.

A step keeps its first ``tracking.num_logged_samples`` groups whole, every sample of each, so the best and the
worst answer to one prompt can be set side by side. Prompts arrive in the sampler's shuffled order, so the first
groups are a random sample of the step's. Each kept sample is one line of ``<run_dir>/samples.jsonl``; with wandb
on, a step's samples are also a ``samples`` table. The run service reads them back with ``read_samples``.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlstack.data.prompts import Prompt
from rlstack.types import Completion

if TYPE_CHECKING:
    import torch

    from actors.reward import Scores

SAMPLES_FILE = "samples.jsonl"
MAX_TEXT_CHARS = 2000
"""Prompts, answers and completions longer than this are cut to it and end in ``…``, so that a step's lines stay
small whatever the model writes."""
LINE_START = re.compile(rb'^\{"step": (\d+), "group": (\d+), "index": (\d+),')
"""The start of every line ``SampleLog`` writes: a line's step, group and sample index are read without parsing
the rest."""


@dataclass(frozen=True)
class LoggedSample:
    """One kept completion, with its prompt and how it was scored."""

    step: int
    """The training step that generated it (the first field of its line, see ``LINE_START``)."""
    group: int
    """Index of its prompt among the step's prompts."""
    index: int
    """Index of the sample within its group."""
    prompt: str
    """The prompt's last user message, as the rewards receive it."""
    answer: str | None
    """The prompt's reference ``answer`` field, if it has one."""
    completion: str
    """The decoded completion."""
    reward: float
    """The weighted sum of the reward functions' scores: what the advantage is computed from."""
    scores: dict[str, float]
    """Each reward function's own score, by metric name."""
    advantage: float
    """The group-relative advantage it was trained with (also for groups that were dropped and trained nothing)."""
    finish_reason: str
    """``stop`` or ``length``."""
    policy_version: int
    """Version of the weights that generated it."""
    num_tokens: int
    """Completion tokens."""


def cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def select(
    step: int,
    prompts: list[Prompt],
    groups: list[list[Completion]],
    scores: "Scores",
    advantages: "torch.Tensor",
    num_groups: int,
) -> list[LoggedSample]:
    """Every sample of the first ``num_groups`` groups.

    ``groups``: ``[G][n]`` completions of ``prompts[g]``; ``scores``: the reward pool's answer for them, flattened
    in group order (``G * n``); ``advantages``: ``[G, n]``.
    """
    kept = []
    for g, (prompt, group) in enumerate(zip(prompts[:num_groups], groups[:num_groups], strict=True)):
        answer = prompt.fields.get("answer")
        for i, completion in enumerate(group):
            flat = g * len(group) + i
            kept.append(
                LoggedSample(
                    step=step,
                    group=g,
                    index=i,
                    prompt=cut(prompt.question),
                    answer=None if answer is None else cut(str(answer)),
                    completion=cut(completion.text),
                    reward=scores.rewards[flat],
                    scores={name: values[flat] for name, values in scores.by_function.items()},
                    advantage=float(advantages[g, i]),
                    finish_reason=completion.finish_reason,
                    policy_version=completion.policy_version,
                    num_tokens=len(completion.token_ids),
                )
            )
    return kept


def wandb_table(samples: list[LoggedSample]) -> tuple[list[Any], list[list[Any]]]:
    """Columns and rows of a step's samples as a table: one column per reward function, in the pool's order."""
    functions = list(samples[0].scores)
    fields = [name for name in LoggedSample.__dataclass_fields__ if name != "scores"]
    at = fields.index("reward") + 1
    columns: list[Any] = [*fields[:at], *functions, *fields[at:]]
    rows = []
    for s in samples:
        record = asdict(s)
        values = [record[name] for name in fields]
        rows.append([*values[:at], *(s.scores[name] for name in functions), *values[at:]])
    return columns, rows


class SampleLog:
    """Keeps each step's sample in ``<run_dir>/samples.jsonl`` and, given a wandb run, as its ``samples`` table."""

    def __init__(self, run_dir: Path, num_groups: int, wandb_run: Any = None):
        """``num_groups``: groups kept per step (``tracking.num_logged_samples``); 0 keeps none."""
        self.path = run_dir / SAMPLES_FILE
        self.num_groups = num_groups
        self.wandb_run = wandb_run

    def log(
        self,
        step: int,
        prompts: list[Prompt],
        groups: list[list[Completion]],
        scores: "Scores",
        advantages: "torch.Tensor",
    ) -> list[LoggedSample]:
        """Select (see ``select``), append and return the step's samples."""
        samples = select(step, prompts, groups, scores, advantages, self.num_groups)
        if not samples:
            return samples
        with self.path.open("a") as file:
            file.writelines(json.dumps(asdict(s)) + "\n" for s in samples)
        if self.wandb_run is not None:
            import wandb

            columns, rows = wandb_table(samples)
            self.wandb_run.log({"samples": wandb.Table(columns=columns, data=rows)}, step=step)
        return samples


def read_samples(path: Path, step: int | None = None) -> tuple[list[int], int | None, list[dict[str, Any]]]:
    """``(steps, step, samples)``: every step with samples in ``path``, oldest first; the step shown (``step``, or
    the latest when ``None``); and its samples. A step logged again after a resume shows its last logging.

    Only the chosen step's lines are parsed, so a long run's file is read at the cost of scanning it.
    """
    if not path.is_file():
        return [], step, []
    steps: set[int] = set()
    chosen: list[bytes] = []
    with path.open("rb") as file:
        for line in file:
            match = LINE_START.match(line)
            if match is None or not line.endswith(b"\n"):
                continue  # a line still being written
            at, first = int(match.group(1)), match.group(2, 3) == (b"0", b"0")
            steps.add(at)
            if at == (step if step is not None else max(steps)):
                if first:
                    chosen = []  # a step's logging starts with its first sample and replaces any earlier one
                chosen.append(line)
    shown = step if step is not None else (max(steps) if steps else None)
    return sorted(steps), shown, [json.loads(line) for line in chosen]
