"""The turn loop: ``n`` trajectories of each prompt, the model and an environment taking turns, token in,
token out.

Each turn, every unfinished trajectory's token ids so far go to the engine, which continues
them (``Engine.generate`` takes token ids, so the model's own tokens are never decoded and
encoded again). The environment answers each model turn (``rlstack.environment``); its
observation is appended as the tokens the chat template gives it after the conversation so
far (``observation_ids``). The trajectory keeps, per token, whether the model produced it
(``Completion.model_mask``), so the trainer scores model tokens only.

A trajectory ends when the environment says ``done``, after ``rollout.max_turns`` model turns,
or at ``rollout.max_trajectory_tokens`` tokens after the prompt (the last two with
``finish_reason="length"``), or at its first failed environment call (``Trajectory.error``),
which scores ``reward.error_score``. A prompt's ``n`` trajectories start from one opening: ``reset`` must
answer alike for one row.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from transformers import PreTrainedTokenizerBase

from rlstack.data.chat import render_prompt
from rlstack.data.prompts import Message, Prompt
from rlstack.environment import ErrorKind, Outcome, Step
from rlstack.types import Completion, SamplingParams

DIFFERENT_OPENING = (
    "reset opened differently for one row: a GRPO group is n trajectories from one start, so reset must answer "
    "alike for one row"
)

Generate = Callable[[list[list[int]], SamplingParams], list[list[Completion]]]
"""``generate(prompts, params)``: the rollout group's ``params.n`` completions of each prompt's token ids."""


class Environments(Protocol):
    """Where the environment instances live, one per trajectory key (``actors.environment.EnvironmentPool``)."""

    def reset(self, keys: list[int], rows: list[dict[str, Any]]) -> list[Outcome]: ...

    def step(self, keys: list[int], messages: list[list[Message]], completions: list[str]) -> list[Outcome]: ...

    def close(self, keys: list[int]) -> None: ...


@dataclass(frozen=True)
class Trajectory:
    """One sample of a prompt: a single completion, or the turns of a multi-turn trajectory."""

    prompt_ids: tuple[int, ...]
    """The templated opening messages (the prompt's own, or the environment's ``reset``)."""
    completion: Completion
    """Every token after the prompt; for a trajectory, ``model_mask`` marks the model's and ``text`` is the whole
    exchange, chat markup included."""
    answer: str
    """The model's last turn: what ``reward.functions`` score."""
    num_turns: int = 1
    """Model turns."""
    env_reward: float | None = None
    """The environment's last reward, if it gave one."""
    error: ErrorKind | None = None
    """The kind of the environment failure that ended it, else ``None``."""
    error_message: str = ""
    """That failure's traceback or reason."""
    info: dict[str, float] = field(default_factory=dict)
    """The environment's ``Step.info``, summed over the turns."""


def single_turn(prompt_ids: list[list[int]], groups: list[list[Completion]]) -> list[list[Trajectory]]:
    """One-turn trajectories of the engine's completions of ``prompt_ids``."""
    return [[Trajectory(tuple(p), c, c.text) for c in group] for p, group in zip(prompt_ids, groups, strict=True)]


def observation_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], observation: list[Message], closed: bool
) -> list[int]:
    """The tokens that follow the model's turn (the last of ``messages``): ``observation`` and the next
    generation prompt, as the chat template renders them after the conversation so far.

    The template renders the conversation without and with the observation; the observation's text is what the
    second adds after the first's last end-of-turn token (with it, when ``closed`` is false: the model's turn
    was cut before it sampled one, so the environment closes it). ``ValueError`` if the template renders the
    conversation differently once an observation follows.
    """
    before = str(tokenizer.apply_chat_template(messages, tokenize=False))
    after = str(tokenizer.apply_chat_template(messages + observation, add_generation_prompt=True, tokenize=False))
    if not after.startswith(before):
        raise ValueError("the chat template renders the conversation differently once the observation follows")
    end_of_turn = str(tokenizer.eos_token)
    at = before.rfind(end_of_turn)
    cut = len(before) if at < 0 else at + (len(end_of_turn) if closed else 0)
    return list(tokenizer(after[cut:], add_special_tokens=False)["input_ids"])


@dataclass
class Running:
    """A trajectory being built."""

    key: int
    messages: list[Message]
    prompt_ids: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    answer: str = ""
    num_turns: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    policy_version: int = -1
    env_reward: float | None = None
    error: ErrorKind | None = None
    error_message: str = ""
    info: Counter[str] = field(default_factory=Counter)
    done: bool = False

    def fail(self, outcome: Outcome) -> None:
        self.error, self.error_message, self.done = outcome.error, outcome.message, True

    def add(self, ids: Sequence[int], logprobs: Sequence[float], by_model: bool) -> None:
        self.tokens += ids
        self.logprobs += logprobs
        self.mask += [int(by_model)] * len(ids)


class TurnLoop:
    """Runs trajectories against ``environments`` with the engines' ``generate``."""

    def __init__(
        self,
        generate: Generate,
        environments: Environments,
        tokenizer: PreTrainedTokenizerBase,
        max_turns: int,
        max_tokens: int,
        system_prompt: str | None = None,
    ):
        self.generate = generate
        self.environments = environments
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.next_key = 0

    def run(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Trajectory]]:
        """``params.n`` trajectories of each prompt, in prompt order; each model turn samples with ``params``
        (``max_new_tokens`` per turn), seeded ``params.seed + turn``."""
        runs = [Running(self.next_key + i, []) for i in range(len(prompts) * params.n)]
        self.next_key += len(runs)
        rows = [row_of(prompts[i // params.n]) for i in range(len(runs))]
        openings: dict[int, list[int]] = {}  # per prompt, the opening its trajectories share
        resets = self.environments.reset([r.key for r in runs], rows)
        for i, (run, outcome) in enumerate(zip(runs, resets, strict=True)):
            if outcome.error is not None:
                run.fail(outcome)
                continue
            run.messages = list(outcome.value)
            run.prompt_ids = render_prompt(self.tokenizer, run.messages, self.system_prompt)
            if openings.setdefault(i // params.n, run.prompt_ids) != run.prompt_ids:
                run.fail(Outcome(error="bad_value", message=DIFFERENT_OPENING))
        for i, run in enumerate(runs):  # a trajectory that failed at reset keeps its group's opening, or the row's
            if run.error is not None:
                row_opening = render_prompt(self.tokenizer, rows[i]["messages"], self.system_prompt)
                run.prompt_ids = openings.get(i // params.n, row_opening)
        for turn in range(self.max_turns):
            active = [r for r in runs if not r.done]
            if not active:
                break
            turn_params = replace(params, n=1, seed=params.seed + turn)
            completions = self.generate([r.prompt_ids + r.tokens for r in active], turn_params)
            for run, (completion,) in zip(active, completions, strict=True):
                self.add_model_turn(run, completion)
            steps = self.environments.step(
                [r.key for r in active], [r.messages for r in active], [r.answer for r in active]
            )
            for run, outcome in zip(active, steps, strict=True):
                self.take_step(run, outcome, last_turn=turn + 1 == self.max_turns)
        self.environments.close([r.key for r in runs])
        trajectories = [self.trajectory(r) for r in runs]
        return [trajectories[g * params.n : (g + 1) * params.n] for g in range(len(prompts))]

    def add_model_turn(self, run: Running, completion: Completion) -> None:
        """Append the model's turn, cut to the trajectory's remaining tokens."""
        room = self.max_tokens - len(run.tokens)
        ids, logprobs = completion.token_ids[:room], completion.logprobs[:room]
        cut = len(completion.token_ids) > room
        run.add(ids, logprobs, by_model=True)
        run.answer = str(self.tokenizer.decode(list(ids), skip_special_tokens=True)) if cut else completion.text
        run.messages.append({"role": "assistant", "content": run.answer})
        run.num_turns += 1
        run.finish_reason = "length" if cut else completion.finish_reason
        run.policy_version = completion.policy_version if run.policy_version < 0 else run.policy_version

    def take_step(self, run: Running, outcome: Outcome, last_turn: bool) -> None:
        """Apply the environment's answer: end the trajectory, or append its observation."""
        if outcome.error is not None:
            run.fail(outcome)
            return
        step: Step = outcome.value
        run.info.update(step.info)
        if step.reward is not None:
            run.env_reward = float(step.reward)
        if step.done:
            run.done = True
            return
        if last_turn:
            run.finish_reason, run.done = "length", True
            return
        assert step.observation is not None  # check_step: not done means an observation
        closed = bool(run.tokens) and run.tokens[-1] == self.tokenizer.eos_token_id
        try:
            ids = observation_ids(self.tokenizer, run.messages, step.observation, closed)
        except ValueError as exc:
            run.fail(Outcome(error="bad_value", message=f"Step.observation: {exc}"))
            return
        if len(run.tokens) + len(ids) >= self.max_tokens:
            run.finish_reason, run.done = "length", True
            return
        run.add(ids, [0.0] * len(ids), by_model=False)
        run.messages += step.observation
        run.finish_reason = "stop"

    def trajectory(self, run: Running) -> Trajectory:
        completion = Completion(
            token_ids=tuple(run.tokens),
            logprobs=tuple(run.logprobs),
            finish_reason=run.finish_reason,
            policy_version=run.policy_version,
            text=str(self.tokenizer.decode(run.tokens)),
            model_mask=tuple(run.mask),
        )
        return Trajectory(
            prompt_ids=tuple(run.prompt_ids),
            completion=completion,
            answer=run.answer,
            num_turns=run.num_turns,
            env_reward=run.env_reward,
            error=run.error,
            error_message=run.error_message,
            info=dict(run.info),
        )


def row_of(prompt: Prompt) -> dict[str, Any]:
    """What an environment's ``reset`` receives: the row's fields, ``prompt`` and ``messages``."""
    return {**prompt.fields, "prompt": prompt.question, "messages": [dict(m) for m in prompt.messages]}


def trajectory_metrics(groups: list[list[Trajectory]]) -> dict[str, float]:
    """Means over trajectories: model turns, environment turns, tokens by source, environment ``info``; and
    failed environment calls, in all and by kind."""
    flat = [t for group in groups for t in group]
    count = max(len(flat), 1)
    model_tokens = sum(t.completion.num_model_tokens for t in flat)
    env_tokens = sum(len(t.completion.token_ids) for t in flat) - model_tokens
    errors = Counter(t.error for t in flat if t.error is not None)
    info: Counter[str] = Counter()
    for t in flat:
        info.update(t.info)
    return {
        "trajectory/turns": sum(t.num_turns for t in flat) / count,
        "trajectory/model_tokens": model_tokens / count,
        "trajectory/env_tokens": env_tokens / count,
        **{f"env/{key}": value / count for key, value in sorted(info.items())},
        "env/errors": float(sum(errors.values())),
        **{f"env/errors/{kind}": float(n) for kind, n in sorted(errors.items())},
    }
