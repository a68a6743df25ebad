"""The step loop. One GRPO step (``GRPOController.step``):

1. sample ``rollout.num_prompts`` prompts (``data``, one epoch's shuffled order at a time);
2. generate ``rollout.num_samples`` completions of each with the engines (``rollout.engine``), seeded from
   ``trainer.seed`` and the step;
3. score them in the reward pool (``reward.functions``, each call within ``reward.timeout_s``);
4. group-relative advantages (``algorithm.normalize_std``); groups whose rewards are all equal are dropped
   (``algorithm.drop_zero_variance_groups``), and a step left with none trains nothing and says so;
5. the engines sleep through the update if memory requires it (``rollout.sleep_while_training``);
6. train: ``algorithm.num_minibatches`` optimizer steps of the objective (``actors.objectives``);
7. sync the new weights to every engine as the next policy version (``rollout.weight_transport``);
8. log (``tracking``); every ``eval.every_steps`` evaluate on held-out prompts, every
   ``checkpoint.every_steps`` save a checkpoint.

A trainer rank or an engine that dies or misses its deadline ends the step with ``ActorFailure``; with
``checkpoint.auto_resume`` the controller rebuilds that group and goes on (``Controller.recover``).

SFT and DPO steps (``rlstack.sft``, ``rlstack.dpo``) are step 6 alone, on their own data.
"""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from actors.calls import ActorFailure
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
from rlstack.samples import SampleLog
from rlstack.tracking import Tracker, plot_run
from rlstack.types import Completion, Sample, SamplingParams, TrainBatch

SEED_STRIDE = 1_000_003
"""Step seeds are ``trainer.seed * SEED_STRIDE + step``: a prime stride, so runs of different seeds never share
a step's seed within a million steps."""
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
        self.policy_version = 0
        self.engine_version: int | None = None
        self.start_step = 0
        self.last_checkpoint = recipe.checkpoint.resume_from
        self.num_restarts = 0
        try:  # a group that fails to start takes the ones already started down with it
            if self.held_out_prompts:
                self.rollout = RolloutGroup(recipe)
                self.rewards = RewardPool(recipe.reward, recipe.placement)
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
        groups = {"trainer": self.trainer, "rollout": self.rollout, "reward": self.rewards}
        return {name: group.nodes() for name, group in groups.items() if group is not None}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tracker.close()
        self.shutdown()

    def shutdown(self) -> None:
        """Free the cluster's resources: kill the actors and remove the placement groups."""
        for group in (self.rewards, self.rollout, self.trainer):
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
        step = self.start_step
        while step < num_steps:
            step += 1
            version, sampler_state = self.policy_version, self.sampler.state()
            try:
                metrics = self.step(step)
                if self.recipe.eval.every_steps and step % self.recipe.eval.every_steps == 0:
                    (after, seconds), evaluated = self.timed_evaluation(), step
                    metrics.update({**after, **seconds})
                self.tracker.log(step, metrics)
                if self.recipe.checkpoint.every_steps and step % self.recipe.checkpoint.every_steps == 0:
                    checkpoint = self.save_checkpoint(step)
            except ActorFailure as failure:
                step = self.recover(failure, step, version == self.policy_version, sampler_state)
        if evaluated != num_steps:
            after, seconds = self.timed_evaluation()
            self.tracker.log(num_steps, {**after, **seconds})
        if self.recipe.checkpoint.at_end and checkpoint != checkpoint_dir(self.recipe, self.run_dir, num_steps):
            checkpoint = self.save_checkpoint(num_steps)
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
        """What a checkpoint needs besides the trainer's own state, to continue exactly."""
        return {"step": step, "policy_version": self.policy_version, "sampler": self.sampler.state()}

    def resume(self, path: str) -> dict[str, Any]:
        """Continue from a checkpoint; returns its controller state."""
        state = load_controller_state(path)
        self.trainer.load(path)
        self.start_step = state["step"]
        self.policy_version = state["policy_version"]
        self.sampler.load_state(state["sampler"])
        return state

    def recover(self, failure: ActorFailure, step: int, trainer_untouched: bool, sampler_state: dict[str, Any]) -> int:
        """Rebuild the group that ``failure`` tore down during ``step`` and return the last step whose state is
        now restored. An engine failure before the trainer moved retries the step, with the current weights
        synced to the new engines; any other restores the trainer from the run's last checkpoint (or the
        starting weights) and syncs that. Logs the restart; re-raises without ``checkpoint.auto_resume`` or past
        ``checkpoint.max_restarts``."""
        section = self.recipe.checkpoint
        if not section.auto_resume:
            raise failure
        if self.num_restarts >= section.max_restarts:
            raise RuntimeError(
                f"{failure}; checkpoint.max_restarts={section.max_restarts} restarts were spent"
            ) from failure
        self.num_restarts += 1
        retry = failure.group == "rollout" and trainer_untouched
        if failure.group == "rollout":
            self.rollout = RolloutGroup(self.recipe)
        if failure.group == "trainer" or not (retry or self.last_checkpoint):
            self.trainer.shutdown()  # the starting weights are a new group's
            self.trainer = TrainerGroup(self.recipe)
        self.weight_sync = WeightSync(self.trainer, self.rollout, self.recipe.rollout) if self.rollout else None
        if retry:
            self.sampler.load_state(sampler_state)
            restored = step - 1
        elif self.last_checkpoint:
            restored = self.resume(self.last_checkpoint)["step"]
        else:
            self.policy_version, restored = 0, 0
            self.sampler.load_state(self.first_sampler_state)
        if self.rollout is not None:
            self.sync_weights()
        self.tracker.log(
            step,
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

    def score(self, prompts: list[Prompt], groups: list[list[Completion]]) -> Scores:
        """Rewards for every completion, flattened in group order."""
        assert self.rewards is not None
        requests = [
            ScoreRequest(c.text, p.question, p.fields, len(c.token_ids), c.finish_reason)
            for p, group in zip(prompts, groups, strict=True)
            for c in group
        ]
        return self.rewards.score(requests)

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
        prompts = [self.prompt_ids(p) for p in self.held_out_prompts]
        max_tokens = self.recipe.rollout.max_new_tokens
        stop = tuple(self.recipe.rollout.stop)
        greedy = self.rollout.generate(
            prompts, SamplingParams(n=1, max_new_tokens=max_tokens, temperature=0.0, stop=stop)
        )
        sampled = self.rollout.generate(
            prompts,
            SamplingParams(
                n=self.recipe.eval.num_samples,
                max_new_tokens=max_tokens,
                temperature=1.0,
                seed=self.policy_version,
                stop=stop,
            ),
        )
        held_out = self.held_out_prompts
        return {
            "eval/greedy_accuracy": self.correct(self.score(held_out, greedy)).float().mean().item(),
            "eval/sampled_accuracy": self.correct(self.score(held_out, sampled)).float().mean().item(),
        }

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return render_prompt(self.tokenizer, prompt.messages, self.recipe.data.system_prompt)


class GRPOController(Controller):
    """GRPO: sample groups of completions, score them, train on group-relative advantages, sync."""

    num_untrained_steps = 0
    """Steps in a row whose every group had equal rewards, so nothing trained."""
    engines_slept: bool | None = None
    """Whether measured memory made the engines sleep through the last update; ``None`` before it was measured."""

    def step(self, step: int) -> dict[str, Any]:
        """One GRPO step; returns its metrics."""
        assert self.rollout is not None
        rollout, algo = self.recipe.rollout, self.recipe.algorithm
        metrics: dict[str, Any] = {}
        with timed(metrics, "step"):
            batch = self.sampler.next_batch(rollout.num_prompts)
            prompts = [self.prompt_ids(p) for p in batch]
            params = SamplingParams(
                n=rollout.num_samples,
                max_new_tokens=rollout.max_new_tokens,
                temperature=rollout.temperature,
                top_p=rollout.top_p,
                seed=self.recipe.trainer.seed * SEED_STRIDE + step,
                stop=tuple(rollout.stop),
            )
            with timed(metrics, "generate"):
                groups = self.rollout.generate(prompts, params)
            with timed(metrics, "reward"):
                scores = self.score(batch, groups)
            rewards = torch.tensor(scores.rewards).view(len(groups), -1)  # [G, n]
            correct = self.correct(scores)  # [G * n]
            advantages, adv_metrics = group_advantages(rewards, algo.normalize_std)
            keep = (
                ~zero_variance_groups(rewards)
                if algo.drop_zero_variance_groups
                else torch.ones(len(groups), dtype=torch.bool)
            )
            samples = [
                Sample(tuple(prompts[g]), completion, float(advantages[g, i]))
                for g in keep.nonzero().flatten().tolist()
                for i, completion in enumerate(groups[g])
            ]
            if samples:
                sleeps = self.engines_sleep(metrics)
                if sleeps:
                    self.rollout.sleep()
                with timed(metrics, "train"):
                    metrics.update(self.train(samples))
                if sleeps:
                    self.trainer.free_cached_memory()  # the engine wakes into the memory training used
                metrics["rollout/engine_slept"] = float(sleeps)
                with timed(metrics, "sync"):
                    self.policy_version += 1
                    self.sync_weights()
        self.samples.log(step, batch, groups, scores, advantages)
        completions = [c for group in groups for c in group]
        generated = sum(len(c.token_ids) for c in completions)
        identical = sum(len({c.token_ids for c in group}) == 1 for group in groups) / len(groups)
        self.num_untrained_steps = 0 if samples else self.num_untrained_steps + 1
        if not samples:
            metrics["warning"] = untrained_warning(step, self.num_untrained_steps, identical)
        metrics.update(
            {
                "reward/mean": rewards.mean().item(),
                "reward/std": rewards.std().item(),
                **scores.metrics,
                "reward/errors": scores.num_errors,
                "accuracy": correct.float().mean().item(),
                "response_length": generated / len(completions),
                "truncated_fraction": sum(c.finish_reason == "length" for c in completions) / len(completions),
                "zero_variance_fraction": adv_metrics["zero_variance_fraction"],
                "identical_group_fraction": identical,
                "num_trained_seqs": len(samples),
                "policy_version": self.policy_version,
                "throughput/generate_tok_s": generated / metrics["time/generate"],
            }
        )
        if samples:
            trained = sum(len(s.prompt_ids) + len(s.completion.token_ids) for s in samples)
            metrics["throughput/train_tok_s"] = trained * algo.num_minibatches / metrics["time/train"]
        return metrics

    def engines_sleep(self, metrics: dict[str, Any]) -> bool:
        """Whether the engines sleep through this update (``rollout.sleep_while_training``). ``auto`` decides from
        each trainer rank's GPU memory after the last update and puts a ``note`` in ``metrics`` when it changes."""
        setting = self.recipe.rollout.sleep_while_training
        if setting != "auto":
            return setting
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
            num_tokens = sum(len(s.completion.token_ids) for s in minibatch)
            batches = [
                TrainBatch(tuple(s), num_tokens, len(minibatch), self.recipe.rollout.max_new_tokens) for s in shards
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
