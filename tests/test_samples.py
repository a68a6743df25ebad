import json

import pytest
import torch

from actors.reward import Scores
from rlstack.config import RecipeError, load_recipe
from rlstack.data.prompts import user_prompt
from rlstack.samples import MAX_TEXT_CHARS, SampleLog, read_samples, select
from rlstack.types import Completion


def completion(text: str, finish_reason: str = "stop", policy_version: int = 3) -> Completion:
    return Completion(tuple(range(len(text))), (0.0,) * len(text), finish_reason, policy_version, text)  # type: ignore[arg-type]


def step_rollouts(num_groups: int = 3, n: int = 2):
    """``num_groups`` prompts ``"q<g>"`` with ``n`` completions ``"a<g>.<i>"``; sample ``(g, i)`` scores ``g + i``
    on ``correct`` and ``0.5`` on ``format``, and has advantage ``10 * g + i``."""
    prompts = [user_prompt(f"q{g}", answer=str(g)) for g in range(num_groups)]
    groups = [[completion(f"a{g}.{i}", "length" if i else "stop") for i in range(n)] for g in range(num_groups)]
    correct = [float(g + i) for g in range(num_groups) for i in range(n)]
    scores = Scores(
        rewards=[c + 0.5 for c in correct],
        by_function={"correct": correct, "format": [0.5] * len(correct)},
        metrics={},
        num_errors=0,
    )
    advantages = torch.tensor([[10.0 * g + i for i in range(n)] for g in range(num_groups)])  # [G, n]
    return prompts, groups, scores, advantages


def test_a_step_keeps_every_sample_of_its_first_groups_with_each_functions_score():
    kept = select(7, *step_rollouts(num_groups=3, n=2), num_groups=2)
    assert [(s.group, s.index, s.completion) for s in kept] == [
        (0, 0, "a0.0"),
        (0, 1, "a0.1"),
        (1, 0, "a1.0"),
        (1, 1, "a1.1"),
    ]
    last = kept[-1]
    assert (last.step, last.prompt, last.answer) == (7, "q1", "1")
    assert last.scores == {"correct": 2.0, "format": 0.5} and last.reward == 2.5
    assert (last.advantage, last.finish_reason, last.policy_version, last.num_tokens) == (11.0, "length", 3, 4)


def test_more_groups_asked_for_than_a_step_has_keeps_them_all():
    assert len(select(1, *step_rollouts(num_groups=2, n=3), num_groups=8)) == 6


def test_long_text_is_cut_so_that_a_line_stays_bounded():
    _, groups, scores, advantages = step_rollouts(num_groups=1, n=2)
    groups[0][0] = completion("x" * 50_000)
    [long, short] = select(1, [user_prompt("q" * 50_000)], groups, scores, advantages, num_groups=1)
    assert len(long.completion) == len(long.prompt) == MAX_TEXT_CHARS and long.completion.endswith("…")
    assert short.completion == "a0.1"


def test_samples_are_appended_to_samples_jsonl_and_read_back_by_step(tmp_path):
    log = SampleLog(tmp_path, num_groups=1)
    for step in (1, 2, 3):
        log.log(step, *step_rollouts(num_groups=2, n=2))
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["scores"] == {"correct": 0.0, "format": 0.5}
    steps, shown, samples = read_samples(tmp_path / "samples.jsonl", 2)
    assert steps == [1, 2, 3] and shown == 2 and [s["step"] for s in samples] == [2, 2]
    steps, shown, samples = read_samples(tmp_path / "samples.jsonl")
    assert shown == 3 and [s["completion"] for s in samples] == ["a0.0", "a0.1"]
    assert read_samples(tmp_path / "samples.jsonl", 9) == ([1, 2, 3], 9, [])


def test_no_samples_file_reads_as_no_steps(tmp_path):
    assert read_samples(tmp_path / "samples.jsonl") == ([], None, [])


def test_num_logged_samples_zero_writes_nothing(tmp_path):
    assert SampleLog(tmp_path, num_groups=0).log(1, *step_rollouts()) == []
    assert not (tmp_path / "samples.jsonl").exists()


def test_a_step_logged_again_after_a_resume_shows_its_last_logging(tmp_path):
    log = SampleLog(tmp_path, num_groups=1)
    log.log(1, *step_rollouts(num_groups=1))
    log.log(2, *step_rollouts(num_groups=1))
    prompts, _, scores, advantages = step_rollouts(num_groups=1)
    log.log(2, prompts, [[completion("again"), completion("again")]], scores, advantages)  # resumed from step 1
    steps, _, samples = read_samples(tmp_path / "samples.jsonl")
    assert steps == [1, 2] and [s["completion"] for s in samples] == ["again", "again"]


def test_a_line_still_being_written_is_not_read(tmp_path):
    SampleLog(tmp_path, num_groups=1).log(1, *step_rollouts(num_groups=1, n=1))
    with (tmp_path / "samples.jsonl").open("a") as file:
        file.write('{"step": 2, "group": 0, "ind')
    assert read_samples(tmp_path / "samples.jsonl") == read_samples(tmp_path / "samples.jsonl", 1)


class FakeWandbRun:
    def __init__(self):
        self.logged = []

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))


def test_with_wandb_on_a_step_is_a_table_with_a_column_per_reward_function(tmp_path):
    run = FakeWandbRun()
    SampleLog(tmp_path, num_groups=1, wandb_run=run).log(4, *step_rollouts(num_groups=2, n=2))
    [(step, data)] = run.logged
    table = data["samples"]
    assert step == 4 and table.columns[:9] == [
        "step", "group", "index", "prompt", "answer", "completion", "reward", "correct", "format"
    ]  # fmt: skip
    assert table.columns[9:] == ["advantage", "finish_reason", "policy_version", "num_tokens"]
    assert table.data[1] == [4, 0, 1, "q0", "0", "a0.1", 1.5, 1.0, 0.5, 1.0, "length", 3, 4]


@pytest.mark.parametrize("value", [-1, 65])
def test_num_logged_samples_out_of_range_is_refused_naming_the_key(value):
    with pytest.raises(RecipeError, match="tracking.num_logged_samples"):
        load_recipe("recipes/grpo_tiny_random.yaml", [f"tracking.num_logged_samples={value}"])
