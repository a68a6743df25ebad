"""The turn loop against a scripted engine and in-process environment workers: token in, token out."""

import textwrap
from pathlib import Path

import pytest

from actors.environment import EnvironmentWorker
from rlstack import models
from rlstack.config import EnvironmentSection
from rlstack.data.chat import render_prompt
from rlstack.data.prompts import user_prompt
from rlstack.types import Completion, SamplingParams
from rollout.multi_turn import TurnLoop, observation_ids, trajectory_metrics

ENVS = Path(__file__).parents[1] / "assets" / "environments.py"


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("random:tiny")


class ScriptedEngine:
    """Answers every context with ``reply`` (its tokens, then end-of-turn unless ``closes`` is false), logprob -0.5
    each; records the contexts it was given."""

    def __init__(self, tokenizer, reply: str = "ok <tool>2*3</tool>", closes: bool = True):
        self.ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] * closes)
        self.reply = reply
        self.contexts: list[list[int]] = []

    def generate(self, prompts, params):
        assert params.n == 1
        self.contexts += [list(p) for p in prompts]
        ids = tuple(self.ids[: params.max_new_tokens])
        finish = "stop" if len(ids) == len(self.ids) else "length"
        return [[Completion(ids, (-0.5,) * len(ids), finish, 3, self.reply)] for _ in prompts]


def worker(name: str, **kwargs) -> EnvironmentWorker:
    return EnvironmentWorker(EnvironmentSection(fn=f"{ENVS}:{name}", kwargs=kwargs, timeout_s=1.0))


def run(tokenizer, engine, environment, n=2, max_turns=4, max_tokens=200, max_new_tokens=40):
    loop = TurnLoop(engine.generate, environment, tokenizer, max_turns, max_tokens)
    prompts = [user_prompt("What is 2 * 3?", answer=6), user_prompt("What is 1 + 1?", answer=2)]
    return loop.run(prompts, SamplingParams(n=n, max_new_tokens=max_new_tokens))


def test_each_turn_continues_from_the_trajectorys_own_token_ids(tokenizer):
    engine = ScriptedEngine(tokenizer)
    groups = run(tokenizer, engine, worker("Countdown", turns=3))
    trajectory = groups[0][0]
    assert [len(g) for g in groups] == [2, 2]
    assert trajectory.num_turns == 3
    completion = trajectory.completion
    model = [t for t, m in zip(completion.token_ids, completion.model_mask, strict=True) if m]
    assert model == engine.ids * 3  # the model's tokens exactly as sampled, never re-encoded
    assert completion.num_model_tokens == 3 * len(engine.ids)
    assert [lp for lp, m in zip(completion.logprobs, completion.model_mask, strict=True) if not m] == [0.0] * (
        len(completion.token_ids) - completion.num_model_tokens
    )
    # turn 2's context is turn 1's plus the environment's tokens: a prefix extended, never rebuilt
    first, second = engine.contexts[0], engine.contexts[4]
    assert second[: len(first)] == first
    assert second == list(trajectory.prompt_ids) + list(completion.token_ids[: len(second) - len(first)])
    assert trajectory.env_reward == 3.0 and trajectory.error is None
    assert completion.finish_reason == "stop"
    assert trajectory.info == {"steps": 3.0}


def test_the_whole_trajectory_is_what_the_chat_template_renders_of_the_conversation(tokenizer):
    groups = run(tokenizer, ScriptedEngine(tokenizer), worker("Countdown", turns=2))
    trajectory = groups[0][0]
    conversation = [
        {"role": "user", "content": "count down from 2: What is 2 * 3?"},
        {"role": "assistant", "content": "ok <tool>2*3</tool>"},
        {"role": "user", "content": "left: 1"},
        {"role": "assistant", "content": "ok <tool>2*3</tool>"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    text = tokenizer.decode(list(trajectory.prompt_ids) + list(trajectory.completion.token_ids))
    assert rendered.startswith(text) and rendered[len(text) :] == "\n"  # all but the newline after the last turn
    assert trajectory.answer == "ok <tool>2*3</tool>"


def test_a_turn_cut_before_its_end_of_turn_token_is_closed_by_the_environment(tokenizer):
    engine = ScriptedEngine(tokenizer, closes=False)
    trajectory = run(tokenizer, engine, worker("Countdown", turns=2))[0][0]
    completion = trajectory.completion
    first_env_token = completion.token_ids[len(engine.ids)]
    assert first_env_token == tokenizer.eos_token_id
    assert completion.model_mask[len(engine.ids)] == 0


def test_observation_ids_render_the_observation_and_the_next_generation_prompt(tokenizer):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<tool>1+1</tool>"}]
    ids = observation_ids(tokenizer, chat, [{"role": "tool", "content": "2"}], closed=True)
    assert tokenizer.decode(ids) == "\n<|im_start|>tool\n2<|im_end|>\n<|im_start|>assistant\n"


def test_a_trajectory_out_of_turns_ends_with_length(tokenizer):
    groups = run(tokenizer, ScriptedEngine(tokenizer), worker("Countdown", turns=10), max_turns=2)
    trajectory = groups[1][1]
    assert trajectory.num_turns == 2
    assert trajectory.completion.finish_reason == "length"
    assert trajectory.completion.model_mask[-1] == 1  # the last turn's observation is not appended


def test_a_trajectory_out_of_tokens_ends_with_length_within_the_budget(tokenizer):
    engine = ScriptedEngine(tokenizer)
    groups = run(tokenizer, engine, worker("Countdown", turns=10), max_tokens=40)
    for trajectory in (t for g in groups for t in g):
        assert len(trajectory.completion.token_ids) <= 40
        assert trajectory.completion.finish_reason == "length"
        assert 1 <= trajectory.num_turns < 10


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("Raises", "exception", "the tool broke"),
        ("Hangs", "timeout", "timed out after 1 s"),
        ("AsyncHangs", "timeout", "timed out after 1 s"),
        ("ReturnsAString", "bad_value", "expected rlstack.Step"),
        ("BadObservation", "bad_value", "Step.observation must be a non-empty list of messages"),
        ("BadReset", "bad_value", "reset must be a non-empty list of messages"),
    ],
)
def test_an_environment_failure_ends_its_trajectory_with_the_kind_and_the_reason(tokenizer, name, kind, reason):
    groups = run(tokenizer, ScriptedEngine(tokenizer), worker(name))
    for trajectory in (t for g in groups for t in g):
        assert trajectory.error == kind
        assert reason in trajectory.error_message
    metrics = trajectory_metrics(groups)
    assert metrics["env/errors"] == 4 == metrics[f"env/errors/{kind}"]


def test_async_environments_take_turns_like_plain_ones(tokenizer):
    plain = run(tokenizer, ScriptedEngine(tokenizer), worker("Countdown", turns=2))
    coroutines = run(tokenizer, ScriptedEngine(tokenizer), worker("AsyncCountdown", turns=2))
    assert [[t.completion for t in g] for g in plain] == [[t.completion for t in g] for g in coroutines]


def test_trajectory_metrics_count_turns_and_tokens_by_source(tokenizer):
    engine = ScriptedEngine(tokenizer)
    groups = run(tokenizer, engine, worker("Countdown", turns=2))
    metrics = trajectory_metrics(groups)
    assert metrics["trajectory/turns"] == 2.0
    assert metrics["trajectory/model_tokens"] == 2 * len(engine.ids)
    env_tokens = len(groups[0][0].completion.token_ids) - 2 * len(engine.ids)
    assert metrics["trajectory/env_tokens"] == env_tokens > 0
    assert metrics["env/steps"] == 2.0
    assert metrics["env/errors"] == 0.0


def test_the_prompt_is_the_environments_opening_through_the_chat_template(tokenizer):
    trajectory = run(tokenizer, ScriptedEngine(tokenizer), worker("Countdown", turns=1))[0][0]
    opening = [{"role": "user", "content": "count down from 1: What is 2 * 3?"}]
    assert list(trajectory.prompt_ids) == render_prompt(tokenizer, opening)


def test_the_readmes_twenty_line_environment_runs(tokenizer, tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("    # my_envs.py\n", 1)[1].split("\n\n    rlstack train", 1)[0]
    code = textwrap.dedent(block)
    assert len(code.strip().splitlines()) <= 20
    (tmp_path / "my_envs.py").write_text(code)
    environment = EnvironmentWorker(EnvironmentSection(fn=f"{tmp_path}/my_envs.py:Guess"))
    groups = run(tokenizer, ScriptedEngine(tokenizer, reply="50"), environment, max_turns=3)
    trajectory = groups[0][0]  # the answer is 6: "lower", twice, then out of turns
    assert trajectory.num_turns == 3 and trajectory.completion.finish_reason == "length"
    assert tokenizer.decode(trajectory.completion.token_ids).count("lower") == 2


def test_a_trajectory_whose_reset_failed_has_no_tokens_and_its_groups_opening(tokenizer):
    groups = run(tokenizer, ScriptedEngine(tokenizer), worker("FirstResetFails", turns=1))
    failed = [t for g in groups for t in g if t.error is not None]
    assert len(failed) == 1 and failed[0].error == "exception" and "no room" in failed[0].error_message
    assert failed[0].completion.token_ids == () and failed[0].num_turns == 0
    for group in groups:
        assert len({t.prompt_ids for t in group}) == 1
