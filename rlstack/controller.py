"""The step loop. One GRPO step (``GRPOController.step``), in two loops joined by bounded queues
(``rlstack.pipeline``): the rollout loop (``continuous_rollouts``) does 1-3 for each step it is asked for, the
training loop (``step``) asks, then does 4-8:

1. sample ``rollout.num_prompts`` prompts (``data``, one epoch's shuffled order at a time);
2. generate ``rollout.num_samples`` completions of each with the engines (``rollout.engine``), seeded from
   ``trainer.seed`` and the step;
3. score them in the reward pool (``reward.functions``, each call within ``reward.timeout_s``); with
   ``algorithm.refill_zero_variance``, repeat 1-3 until ``rollout.num_prompts`` groups have rewards that differ;
4. group-relative advantages (``algorithm.normalize_std``); groups whose rewards are all equal are dropped
   (``algorithm.drop_zero_variance_groups``), as are samples more than ``algorithm.max_staleness`` policy versions
   old, and a step left with none trains nothing and says so;
5. the engines sleep through the update if memory requires it (``rollout.sleep_while_training``);
6. train: ``algorithm.num_minibatches`` optimizer steps of the objective (``actors.objectives``);
7. once the engines are between batches, sync the new weights to every engine as the next policy version
   (``rollout.weight_transport``);
8. log (``tracking``); every ``eval.every_steps`` evaluate on held-out prompts, every
   ``checkpoint.every_steps`` save a checkpoint.

With ``algorithm.max_staleness`` k > 0, step s asks for the groups of steps up to s + k, so the engines generate
step s + k's while the trainer does 4-6 on step s's; with k = 0, 1-3 and 4-8 take turns.

A trainer rank or an engine that dies or misses its deadline ends the step with ``ActorFailure``; with
``checkpoint.auto_resume`` the controller rebuilds that group and goes on (``Controller.recover``).

SFT and DPO steps (``rlstack.sft``, ``rlstack.dpo``) are step 6 alone, on their own data.
"""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from actors.calls import ActorFailure
from actors.environment import EnvironmentPool, with_environment
from actors.reward import RewardPool, ScoreRequest, Scores
from actors.rollout import RolloutGroup
from actors.trainer import TrainerGroup
from actors.weight_sync import WeightSync
from rlstack import models
from rlstack.algorithms import group_advantages
from rlstack.algorithms.advantages import zero_variance_groups
from rlstack.checkpoint import check_resumable, checkpoint_dir, checkpoint_files, load_controller_state
from rlstack.colocation import describe, must_sleep
from rlstack.config import DataSection, Recipe
from rlstack.data.batching import shard
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import RunData, load_prompt_data
from rlstack.data.prompts import EpochSampler, Prompt
from rlstack.data.split import chunks
from rlstack.pipeline import Channel, Closed, staleness, within_bound
from rlstack.samples import SampleLog
from rlstack.tracking import Tracker, plot_run
from rlstack.types import Completion, Sample, SamplingParams, TrainBatch
from rollout.multi_turn import Trajectory, TurnLoop, single_turn

SEED_STRIDE = 1_000_003
"""Step seeds are ``trainer.seed * SEED_STRIDE + step``: a prime stride, so runs of different seeds never share
a step's seed within a million steps."""
ROUND_SEED_STRIDE = 1_000_000_007
"""A refill round ``r`` of a step samples with the step's seed plus ``r`` times this prime, past any step's seed."""
STALL_SLACK_S = 30.0
"""What the training loop waits on the rollout loop past the deadlines of the calls it makes."""
UNTRAINED_STEPS_WARNING = 3
"""Steps in a row with no group to train on, after which each such step's warning names the likely cause."""


@contextmanager
def timed(metrics: dict[str, Any], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics[f"time/{name}"] = time.perf_counter() - start


class Controller:
    """A run's lifecycle: the actor groups, the step loop, evaluation, checkpoints and logs.

    Subclasses say what one step and one evaluation are (GRPO here; SFT and DPO in
    ``rlstack.sft`` and ``rlstack.dpo``) and hold no math and no engine code. Engines and
    rewards start only when there are held-out prompts to answer: always for GRPO, and
    for SFT and DPO on the built-in task, whose accuracy they then report.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, data: RunData | None = None):
        """``data`` defaults to loading ``recipe.data``; pass it when it is already loaded."""
        if recipe.checkpoint.resume_from:
            check_resumable(recipe.checkpoint.resume_from, recipe.trainer.backend)  # before any actor starts
        self.recipe = recipe
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        self.tokenizer = models.load_tokenizer(recipe.model.path)
        self.data = data or self.load_data(recipe.data, self.tokenizer)
        self.held_out_prompts = self.data.held_out_prompts
        self.sampler: EpochSampler[Any] = EpochSampler(self.data.train, recipe.data.seed, recipe.data.shuffle)
        self.trainer = TrainerGroup(recipe)
        self.rollout: RolloutGroup | None = None
        self.rewards: RewardPool | None = None
        self.environments: EnvironmentPool | None = None
        self.policy_version = 0
        self.engine_version: int | None = None
        self.start_step = 0
        self.last_checkpoint = recipe.checkpoint.resume_from
        self.num_restarts = 0
        try:  # a group that fails to start takes the ones already started down with it
            if self.held_out_prompts:
                self.rollout = RolloutGroup(recipe)
                self.rewards = RewardPool(recipe.reward, recipe.placement)
                if recipe.rollout.environment is not None:
                    self.environments = EnvironmentPool(recipe.rollout.environment)
            self.weight_sync = WeightSync(self.trainer, self.rollout, recipe.rollout) if self.rollout else None
            (run_dir / "placement.json").write_text(json.dumps(self.placement(), indent=1))
            if recipe.checkpoint.resume_from:
                self.resume(recipe.checkpoint.resume_from)
        except BaseException:
            self.shutdown()
            raise
        self.tracker = Tracker(recipe, run_dir, recipe.trainer.num_steps)
        self.samples = SampleLog(run_dir, recipe.tracking.num_logged_samples, self.tracker.run)

    @staticmethod
    def load_data(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> RunData:
        return load_prompt_data(data, tokenizer)

    def placement(self) -> dict[str, list[str]]:
        """The Ray node ID of each actor, by group: trainer ranks, engines, reward actors."""
        groups = {
            "trainer": self.trainer,
            "rollout": self.rollout,
            "reward": self.rewards,
            "environment": self.environments,
        }
        return {name: group.nodes() for name, group in groups.items() if group is not None}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.close()
        self.shutdown()

    def shutdown(self) -> None:
        """Free the cluster's resources: kill the actors and remove the placement groups."""
        for group in (self.environments, self.rewards, self.rollout, self.trainer):
            if group is not None:
                group.shutdown()

    def run(self) -> dict[str, Any]:
        start = time.time()
        before, seconds = self.timed_evaluation()
        self.tracker.log(self.start_step, {**self.data.metrics(), **before, **seconds})
        after = before
        evaluated, checkpoint = self.start_step, None
        self.first_sampler_state = self.sampler.state()
        num_steps = self.recipe.trainer.num_steps
        step, finished = self.start_step, False
        while not finished:
            version, before_step = self.policy_version, self.state(step)
            try:
                if step < num_steps:
                    step += 1
                    metrics = self.step(step)
                    if self.recipe.eval.every_steps and step % self.recipe.eval.every_steps == 0:
                        (after, seconds), evaluated = self.timed_evaluation(), step
                        metrics.update({**after, **seconds})
                    self.tracker.log(step, metrics)
                    if self.recipe.checkpoint.every_steps and step % self.recipe.checkpoint.every_steps == 0:
                        checkpoint = self.save_checkpoint(step)
                    continue
                if evaluated != num_steps:  # the run's end: its evaluation and checkpoint recover like a step
                    (after, seconds), evaluated = self.timed_evaluation(), num_steps
                    self.tracker.log(num_steps, {**after, **seconds})
                final = checkpoint_dir(self.recipe, self.run_dir, num_steps)
                if self.recipe.checkpoint.at_end and checkpoint != final:
                    checkpoint = self.save_checkpoint(num_steps)
                finished = True
            except ActorFailure as failure:
                at = step if step > before_step["step"] else step + 1  # the step that failed, or the run's end
                step = self.recover(failure, at, version == self.policy_version, before_step)
                evaluated = min(evaluated, step)
        plot_run(self.run_dir / "metrics.jsonl", self.run_dir / "plot.png")
        summary = {
            "steps": num_steps,
            **{f"{key.removeprefix('eval/')}_before": value for key, value in before.items()},
            **{f"{key.removeprefix('eval/')}_after": value for key, value in after.items()},
            "policy_version": self.policy_version,
            "wall_s": round(time.time() - start, 1),
            "run_dir": str(self.run_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def step(self, step: int) -> dict[str, Any]:
        """One training step; returns its metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics, named ``eval/...``."""
        return self.task_accuracy()

    def timed_evaluation(self) -> tuple[dict[str, float], dict[str, float]]:
        """``evaluate()``'s metrics, and ``{"time/eval": seconds}`` when there were any."""
        seconds: dict[str, float] = {}
        with timed(seconds, "eval"):
            metrics = self.evaluate()
        return metrics, seconds if metrics else {}

    def save_checkpoint(self, step: int) -> str:
        """The trainer's weights and state, and the controller's, at ``checkpoint_dir``; returns where."""
        target = checkpoint_dir(self.recipe, self.run_dir, step)
        files = checkpoint_files(self.recipe, self.state(step))
        section = self.recipe.checkpoint
        self.trainer.save(target, optimizer=section.optimizer, files=files, keep_last=section.keep_last)
        self.last_checkpoint = target
        return target

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint needs besides the trainer's own state, to continue exactly (JSON)."""
        return {"step": step, "policy_version": self.policy_version, "sampler": self.sampler.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Go back to ``state`` (from ``state``), all but the trainer's weights."""
        self.policy_version = state["policy_version"]
        self.sampler.load_state(state["sampler"])

    def resume(self, path: str) -> dict[str, Any]:
        """Continue from a checkpoint; returns its controller state."""
        state = load_controller_state(path)
        self.trainer.load(path)
        self.load_state(state)
        self.start_step = state["step"]
        return state

    def recover(self, failure: ActorFailure, step: int, trainer_untouched: bool, before_step: dict[str, Any]) -> int:
        """Rebuild the group that ``failure`` tore down during ``step`` (``num_steps + 1``: the run's final
        evaluation or checkpoint) and return the last step whose state is now restored. An engine failure before
        the trainer moved retries the step, with the current weights synced to the new engines; any other
        restores the trainer from the run's last checkpoint (or the starting weights) and syncs that. A failure
        while rebuilding is the next restart. Logs each restart; re-raises without ``checkpoint.auto_resume`` or
        past ``checkpoint.max_restarts``. ``before_step``: the controller's ``state`` when ``step`` began."""
        section = self.recipe.checkpoint
        if not section.auto_resume:
            raise failure
        while True:
            if self.num_restarts >= section.max_restarts:
                raise RuntimeError(
                    f"{failure}; checkpoint.max_restarts={section.max_restarts} restarts were spent"
                ) from failure
            self.num_restarts += 1
            try:
                return self.rebuild(failure, step, trainer_untouched, before_step)
            except ActorFailure as again:
                note = f"restart {self.num_restarts} failed: {again}; it was rebuilding after: {failure}"
                logged_at = min(step, self.recipe.trainer.num_steps)  # the run's end is logged at its last step
                self.tracker.log(logged_at, {"restarts": self.num_restarts, "note": note})
                failure, trainer_untouched = again, trainer_untouched and again.group == "rollout"

    def rebuild(self, failure: ActorFailure, step: int, trainer_untouched: bool, before_step: dict[str, Any]) -> int:
        """One restart of ``recover``: the new group, the restored state, the engines synced; the restored step."""
        retry = failure.group == "rollout" and trainer_untouched
        if failure.group == "rollout":
            self.rollout = RolloutGroup(self.recipe)
        if failure.group == "trainer" or not (retry or self.last_checkpoint):
            self.trainer.shutdown()  # the starting weights are a new group's
            self.trainer = TrainerGroup(self.recipe)
        self.weight_sync = WeightSync(self.trainer, self.rollout, self.recipe.rollout) if self.rollout else None
        if retry:
            self.load_state(before_step)
            restored = step - 1
        elif self.last_checkpoint:
            restored = self.resume(self.last_checkpoint)["step"]
        else:
            self.policy_version, restored = 0, 0
            self.sampler.load_state(self.first_sampler_state)
        if self.rollout is not None:
            self.sync_weights()
        self.tracker.log(
            min(step, self.recipe.trainer.num_steps),  # the run's end is logged at its last step
            {
                "restarts": self.num_restarts,
                "note": f"restart {self.num_restarts}: {failure}; {failure.group} group rebuilt, continuing after "
                f"step {restored}",
            },
        )
        return restored

    def sync_weights(self) -> None:
        """Stream the trainer's full weights to every engine as ``self.policy_version``."""
        assert self.weight_sync is not None
        versions = self.weight_sync.push(self.policy_version)
        assert all(v == self.policy_version for v in versions), versions
        self.engine_version = self.policy_version

    def sample(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Trajectory]]:
        """``params.n`` samples of each prompt: the engines' completions, or with ``rollout.environment`` multi-turn
        trajectories (``rollout.multi_turn``)."""
        assert self.rollout is not None
        if self.environments is None:
            ids = [self.prompt_ids(p) for p in prompts]
            return single_turn(ids, self.rollout.generate(ids, params))
        rollout = self.recipe.rollout
        turns = TurnLoop(
            self.rollout.generate, self.environments, self.tokenizer, rollout.max_turns,
            rollout.max_trajectory_tokens, self.recipe.data.system_prompt,
        )  # fmt: skip
        return turns.run(prompts, params)

    def score(self, prompts: list[Prompt], groups: list[list[Trajectory]]) -> Scores:
        """Rewards for every sample, flattened in group order; a trajectory's answer is its last turn, and its
        environment's reward is added (``with_environment``)."""
        assert self.rewards is not None
        requests = [
            ScoreRequest(t.answer, p.question, p.fields, t.completion.num_model_tokens, t.completion.finish_reason)
            for p, group in zip(prompts, groups, strict=True)
            for t in group
        ]
        scores = self.rewards.score(requests)
        if self.environments is None:
            return scores
        return with_environment(scores, groups, self.recipe.reward.error_score)

    def correct(self, scores: Scores) -> torch.Tensor:
        """``[N]`` bool: the first (correctness) reward scored 1."""
        return torch.tensor(scores.by_function[self.recipe.reward.functions[0].metric_name]) >= 1.0

    def task_accuracy(self) -> dict[str, float]:
        """Held-out accuracy: greedy, and sampled at T=1 with ``eval.num_samples`` per prompt; ``{}`` without
        held-out prompts."""
        if self.rollout is None:
            return {}
        if self.engine_version != self.policy_version:
            self.sync_weights()
        held_out = self.held_out_prompts
        max_tokens = self.recipe.rollout.max_new_tokens
        stop = tuple(self.recipe.rollout.stop)
        greedy = self.sample(held_out, SamplingParams(n=1, max_new_tokens=max_tokens, temperature=0.0, stop=stop))
        sampled = self.sample(
            held_out,
            SamplingParams(
                n=self.recipe.eval.num_samples,
                max_new_tokens=max_tokens,
                temperature=1.0,
                seed=self.policy_version,
                stop=stop,
            ),
        )
        return {
            "eval/greedy_accuracy": self.correct(self.score(held_out, greedy)).float().mean().item(),
            "eval/sampled_accuracy": self.correct(self.score(held_out, sampled)).float().mean().item(),
        }

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return render_prompt(self.tokenizer, prompt.messages, self.recipe.data.system_prompt)


@dataclass(frozen=True)
class Rollouts:
    """One step's scored groups, as ``continuous_rollouts`` hands them to the training loop."""

    step: int
    """The step that trains on them."""
    sampler_state: dict[str, int]
    """The prompt sampler's state before their prompts were drawn; a checkpoint draws them again from it."""
    prompts: list[Prompt]
    """``[G]``: the prompts of every round, in order."""
    prompt_ids: list[list[int]]
    """``[G]``: the templated prompts."""
    groups: list[list[Completion]]
    """``[G][n]``: ``rollout.num_samples`` completions of each prompt."""
    scores: Scores
    """The reward pool's answer for the ``G * n`` completions, in group order."""
    num_rounds: int
    """Rounds of ``rollout.num_prompts`` prompts generated: 1, plus those spent refilling."""
    generate_s: float
    """Seconds the engines spent generating them."""
    reward_s: float
    """Seconds the reward pool spent scoring them."""
    engine_wait_s: float
    """Seconds the engines sat idle before the training loop asked for them."""

    def to_json(self) -> dict[str, Any]:
        """What a checkpoint keeps of them: all but the prompts, which ``sampler_state`` draws again."""
        return {
            "step": self.step,
            "sampler_state": self.sampler_state,
            "prompt_ids": self.prompt_ids,
            "groups": [[asdict(c) for c in group] for group in self.groups],
            "scores": asdict(self.scores),
            "num_rounds": self.num_rounds,
            "seconds": [self.generate_s, self.reward_s, self.engine_wait_s],
        }


class GRPOController(Controller):
    """GRPO as two loops joined by bounded queues, after forge's ``continuous_rollouts`` and ``continuous_training``:

        step (the training loop)                  continuous_rollouts (a thread)
          ask for steps up to s + k   --requests-->  prompts -> rollouts (engines) -> scored groups (rewards)
          scored groups -> train batch <--scored---
          -> update -> sync, once the engines are between batches

    ``k`` is ``algorithm.max_staleness``. Step ``s`` asks for the groups of steps up to ``s + k``, trains on step
    ``s``'s and syncs the new weights once the engines have finished what was asked. So while the trainer updates
    on step ``s``'s groups, the engines generate step ``s + k``'s with the weights of version ``s - 1``, and a
    trained sample lags the weights it updates by at most k versions; anything older (a checkpoint taken with a
    larger k) is dropped and counted. With k = 0 the ask and the wait meet: generate, then train. Which weights
    generate which step's groups depends on k alone, never on timing, so runs repeat, and a checkpoint keeps the
    groups already generated for the next k steps (``state``) to continue exactly.
    """

    num_untrained_steps = 0
    """Steps in a row whose every group had equal rewards, so nothing trained."""
    engines_slept: bool | None = None
    """Whether measured memory made the engines sleep through the last update; ``None`` before it was measured."""

    def __init__(self, recipe: Recipe, run_dir: Path, data: RunData | None = None):
        self.in_flight: list[Rollouts] = []
        """Generated groups of the steps after the current one, while the rollout loop is not running."""
        self.rollout_loop: threading.Thread | None = None
        self.requests: Channel[int] = Channel("requested steps", 1)
        """Steps the training loop asked the rollout loop for."""
        self.scored: Channel[Rollouts] = Channel("scored groups", 1)
        """What the rollout loop hands the training loop."""
        self.asked_through = self.num_asked = 0
        """The last step asked for, and how many were asked for (or restored) since the rollout loop started."""
        super().__init__(recipe, run_dir, data)

    def step(self, step: int) -> dict[str, Any]:
        """One GRPO step; returns its metrics."""
        algo = self.recipe.algorithm
        metrics: dict[str, Any] = {}
        with timed(metrics, "step"):
            self.ask_for_rollouts(step, through=step + algo.max_staleness)
            rollouts, trainer_wait_s = self.scored.get(self.stall_timeout_s, f"step {step}'s training")
            assert rollouts.step == step, (rollouts.step, step)
            groups = rollouts.groups
            rewards = torch.tensor(rollouts.scores.rewards).view(len(groups), -1)  # [G, n]
            advantages, adv_metrics = group_advantages(rewards, algo.normalize_std)
            versions = [group[0].policy_version for group in groups]  # [G]
            fresh = torch.tensor(within_bound(self.policy_version, versions, algo.max_staleness))  # [G]
            keep = self.trainable(rewards) & fresh
            lags = staleness(self.policy_version, [versions[g] for g in keep.nonzero().flatten().tolist()])  # [G']
            samples = [
                Sample(tuple(rollouts.prompt_ids[g]), completion, float(advantages[g, i]))
                for g in keep.nonzero().flatten().tolist()
                for i, completion in enumerate(groups[g])
                if completion.token_ids  # a trajectory whose environment failed at reset has none
            ]
            if samples:
                sleeps = self.engines_sleep(metrics)
                if sleeps:
                    self.rollout_engines().sleep()
                with timed(metrics, "train"):
                    metrics.update(self.train(samples))
                if sleeps:
                    self.trainer.free_cached_memory()  # the engine wakes into the memory training used
                metrics["rollout/engine_slept"] = float(sleeps)
            trainer_wait_s += self.scored.wait_put(self.num_asked, self.stall_timeout_s, f"step {step}'s sync")
            if samples:
                with timed(metrics, "sync"):
                    self.policy_version += 1
                    self.sync_weights()
        self.samples.log(step, rollouts.prompts, groups, rollouts.scores, advantages)
        completions = [c for group in groups for c in group]
        generated = sum(len(c.token_ids) for c in completions)
        identical = sum(len({c.token_ids for c in group}) == 1 for group in groups) / len(groups)
        self.num_untrained_steps = 0 if samples else self.num_untrained_steps + 1
        if not samples:
            metrics["warning"] = untrained_warning(step, self.num_untrained_steps, identical)
        scores = rollouts.scores
        metrics.update(
            {
                "reward/mean": rewards.mean().item(),
                "reward/std": rewards.std().item(),
                **scores.metrics,
                "reward/errors": scores.num_errors,
                "accuracy": self.correct(scores).float().mean().item(),
                "response_length": generated / len(completions),
                "truncated_fraction": sum(c.finish_reason == "length" for c in completions) / len(completions),
                "zero_variance_fraction": adv_metrics["zero_variance_fraction"],
                "identical_group_fraction": identical,
                "num_trained_seqs": len(samples),
                "policy_version": self.policy_version,
                "time/generate": rollouts.generate_s,
                "time/reward": rollouts.reward_s,
                "time/trainer_wait": trainer_wait_s,
                "time/engine_wait": rollouts.engine_wait_s,
                "throughput/generate_tok_s": generated / rollouts.generate_s,
            }
        )
        if algo.max_staleness or not fresh.all():  # on-policy, all 0 but after a resume with a smaller k
            metrics["staleness/mean"] = sum(lags) / len(lags) if lags else 0.0
            metrics["staleness/max"] = max(lags, default=0)
            metrics["staleness/dropped_samples"] = int((~fresh).sum()) * len(groups[0])
        if algo.refill_zero_variance:
            metrics.update({"refill/rounds": rollouts.num_rounds - 1, "refill/groups_generated": len(groups)})
        if samples:
            trained = sum(len(s.prompt_ids) + len(s.completion.token_ids) for s in samples)
            metrics["throughput/train_tok_s"] = trained * algo.num_minibatches / metrics["time/train"]
        return metrics

    def trainable(self, rewards: torch.Tensor) -> torch.Tensor:
        """``[G]`` bool, of ``rewards: [G, n]``: the groups to train on. Groups whose rewards are all equal are left
        out with ``algorithm.drop_zero_variance_groups``; with ``refill_zero_variance``, so are those past the first
        ``rollout.num_prompts`` of the others (DAPO discards the surplus of its last round)."""
        algo = self.recipe.algorithm
        if not algo.drop_zero_variance_groups:
            return torch.ones(len(rewards), dtype=torch.bool)
        keep = ~zero_variance_groups(rewards)
        if algo.refill_zero_variance:
            keep &= keep.cumsum(0) <= self.recipe.rollout.num_prompts
        return keep

    def continuous_rollouts(self) -> None:
        """The rollout loop: prompts -> rollouts -> scored groups, for each step the training loop asks for, until
        it stops asking. A failure ends the loop and reaches the training loop through ``scored``."""
        try:
            while True:
                step, engine_wait_s = self.requests.get(None, "the rollout loop")
                self.scored.put(self.generate_and_score(step, engine_wait_s))
        except Closed:
            return
        except BaseException as error:
            self.scored.close(error)

    def generate_and_score(self, step: int, engine_wait_s: float) -> Rollouts:
        """Step ``step``'s groups of ``rollout.num_samples`` completions of ``rollout.num_prompts`` new prompts,
        scored. With ``algorithm.refill_zero_variance`` (DAPO's dynamic sampling), more rounds of new prompts follow
        until ``rollout.num_prompts`` groups have rewards that differ, or ``max_refill_rounds`` are spent."""
        rollout, algo = self.recipe.rollout, self.recipe.algorithm
        sampler_state = self.sampler.state()
        prompts: list[Prompt] = []
        prompt_ids: list[list[int]] = []
        groups: list[list[Completion]] = []
        parts: list[Scores] = []
        generate_s = reward_s = 0.0
        num_varied = 0
        for round_ in range(1 + (algo.max_refill_rounds if algo.refill_zero_variance else 0)):
            batch = self.sampler.next_batch(rollout.num_prompts)
            start = time.perf_counter()
            trajectories = self.sample(batch, self.sampling_params(step, round_))
            generate_s, start = generate_s + time.perf_counter() - start, time.perf_counter()
            new = [[t.completion for t in group] for group in trajectories]
            ids = [list(group[0].prompt_ids) for group in trajectories]  # a group's trajectories open alike
            parts.append(self.score(batch, trajectories))
            reward_s += time.perf_counter() - start
            prompts, prompt_ids, groups = prompts + batch, prompt_ids + ids, groups + new
            num_varied += int((~zero_variance_groups(torch.tensor(parts[-1].rewards).view(len(new), -1))).sum())
            if num_varied >= rollout.num_prompts:
                break
        return Rollouts(
            step, sampler_state, prompts, prompt_ids, groups, concat(parts), len(parts), generate_s, reward_s,
            engine_wait_s,
        )  # fmt: skip

    def sampling_params(self, step: int, round_: int) -> SamplingParams:
        """How step ``step``'s ``round_``-th round of prompts is sampled; its seed is its own."""
        rollout = self.recipe.rollout
        return SamplingParams(
            n=rollout.num_samples,
            max_new_tokens=rollout.max_new_tokens,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            seed=self.recipe.trainer.seed * SEED_STRIDE + step + round_ * ROUND_SEED_STRIDE,
            stop=tuple(rollout.stop),
        )

    def ask_for_rollouts(self, step: int, through: int) -> None:
        """At step ``step``, have the rollout loop generate every step up to ``through`` (at most
        ``trainer.num_steps``) not yet asked for; start it first if it is not running."""
        if self.rollout_loop is None:
            self.start_rollouts(step)
        for ahead in range(self.asked_through + 1, min(through, self.recipe.trainer.num_steps) + 1):
            self.requests.put(ahead)
            self.asked_through, self.num_asked = ahead, self.num_asked + 1

    def start_rollouts(self, step: int) -> None:
        """Before step ``step``: sync the engines to the current weights and start the rollout loop, its queue
        holding what was in flight (``in_flight``, the groups of the steps from ``step`` on)."""
        if self.engine_version != self.policy_version:
            self.sync_weights()
        capacity = self.recipe.algorithm.max_staleness + 1 + len(self.in_flight)
        self.requests, self.scored = Channel("requested steps", capacity), Channel("scored groups", capacity)
        for rollouts in self.in_flight:
            self.scored.put(rollouts)
        self.asked_through = step - 1 + len(self.in_flight)
        self.num_asked, self.in_flight = len(self.in_flight), []
        self.rollout_loop = threading.Thread(target=self.continuous_rollouts, name="continuous_rollouts", daemon=True)
        self.rollout_loop.start()

    def stop_rollouts(self) -> None:
        """Stop the rollout loop once its current call returns (each has its deadline); what it had generated is
        dropped, to be restored by ``load_state`` or generated again."""
        if self.rollout_loop is not None:
            self.requests.close()
            self.rollout_loop.join()
            self.rollout_loop = None
        self.in_flight = []

    @property
    def stall_timeout_s(self) -> float:
        """How long the training loop waits on the rollout loop: each of a step's rounds within its engine and
        reward deadlines, plus slack. The loop's own calls fail first, naming the actor, when one stalls."""
        assert self.rewards is not None
        algo = self.recipe.algorithm
        num_rounds = 1 + (algo.max_refill_rounds if algo.refill_zero_variance else 0)
        return num_rounds * (self.recipe.rollout.timeout_s + self.rewards.deadline_s) + STALL_SLACK_S

    def rollout_engines(self) -> RolloutGroup:
        assert self.rollout is not None
        return self.rollout

    def run(self) -> dict[str, Any]:
        try:
            return super().run()
        finally:
            self.stop_rollouts()

    def state(self, step: int) -> dict[str, Any]:
        """Besides the base state, the groups already generated for the steps after ``step``: between steps the
        rollout loop is idle, so the sampler has drawn exactly their prompts."""
        waiting = self.scored.snapshot() if self.rollout_loop is not None else self.in_flight
        return {**super().state(step), "in_flight": [r.to_json() for r in waiting]}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.in_flight = [self.rollouts_from_json(r) for r in state.get("in_flight", [])]

    def rollouts_from_json(self, saved: dict[str, Any]) -> Rollouts:
        """``Rollouts.to_json``'s inverse: the prompts are drawn again from the saved sampler state."""
        sampler: EpochSampler[Prompt] = EpochSampler(self.data.train, self.recipe.data.seed, self.recipe.data.shuffle)
        sampler.load_state(saved["sampler_state"])
        groups = [[completion_from_json(c) for c in group] for group in saved["groups"]]
        prompts = sampler.next_batch(len(groups))
        return Rollouts(saved["step"], saved["sampler_state"], prompts, saved["prompt_ids"], groups,
                        Scores(**saved["scores"]), saved["num_rounds"], *saved["seconds"])  # fmt: skip

    def recover(self, failure: ActorFailure, step: int, trainer_untouched: bool, before_step: dict[str, Any]) -> int:
        self.stop_rollouts()
        return super().recover(failure, step, trainer_untouched, before_step)

    def engines_sleep(self, metrics: dict[str, Any]) -> bool:
        """Whether the engines sleep through this update (``rollout.sleep_while_training``). ``auto`` decides from
        each trainer rank's GPU memory after the last update and puts a ``note`` in ``metrics`` when it changes."""
        setting = self.recipe.rollout.sleep_while_training
        if setting != "auto" or self.recipe.algorithm.max_staleness:
            return setting is True  # with max_staleness > 0 the engines generate through the update
        memory = self.trainer.gpu_memory()
        if not all(memory):
            return True  # the first update: its need is not known yet
        sleeps = any(must_sleep(m) for m in memory if m)
        if sleeps != self.engines_slept:
            verdict = "sleep" if sleeps else "stay awake"
            metrics["note"] = f"engines {verdict} during updates: {'; '.join(describe(m) for m in memory if m)}"
        self.engines_slept = sleeps
        return sleeps

    def train(self, samples: list[Sample]) -> dict[str, float]:
        """``num_minibatches`` optimizer steps over the samples; returns the last step's metrics."""
        metrics: dict[str, float] = {}
        for minibatch in chunks(samples, self.recipe.algorithm.num_minibatches):
            shards = shard(minibatch, self.recipe.placement.num_trainer_ranks)
            num_tokens = sum(s.completion.num_model_tokens for s in minibatch)
            batches = [
                TrainBatch(tuple(s), num_tokens, len(minibatch), self.recipe.rollout.max_response_tokens)
                for s in shards
            ]
            metrics = self.trainer.step(batches)
        return metrics


def untrained_warning(step: int, num_steps: int, identical_fraction: float) -> str:
    """What a step that trained nothing says; from ``UNTRAINED_STEPS_WARNING`` steps in a row, the likely cause."""
    message = f"step {step} trained nothing: every group's rewards were equal"
    if num_steps < UNTRAINED_STEPS_WARNING:
        return message
    if identical_fraction == 1.0:
        cause = (
            "every group's samples were identical, so the engine is not sampling each of a prompt's samples with "
            "its own random stream (check its seeding and rollout.temperature)"
        )
    else:
        cause = (
            "the samples differ but score alike: the task is too hard or too easy for the model, or the reward "
            "cannot tell the samples apart"
        )
    return f"{message}, {num_steps} steps in a row: {cause}"


def completion_from_json(saved: dict[str, Any]) -> Completion:
    """``asdict(completion)`` after a JSON round trip, which made its tuples lists, as the ``Completion``."""
    fields: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in saved.items()}
    return Completion(**fields)


def concat(parts: list[Scores]) -> Scores:
    """The scores of several equal-sized rounds of requests as one answer: a mean over all is the mean of the
    rounds' means; error counts add up."""
    if len(parts) == 1:
        return parts[0]
    metrics = {}
    for key in {key: None for p in parts for key in p.metrics}:
        values = [p.metrics[key] for p in parts if key in p.metrics]
        metrics[key] = sum(values) / (1 if key.endswith("/errors") else len(values))
    by_function = {name: [x for p in parts for x in p.by_function[name]] for name in parts[0].by_function}
    return Scores([r for p in parts for r in p.rewards], by_function, metrics, sum(p.num_errors for p in parts))
