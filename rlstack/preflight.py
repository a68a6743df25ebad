"""What ``rlstack train`` checks before any actor starts, beyond the schema.

The schema (``rlstack.config``) holds every field's range and what can be checked from the
recipe alone. These checks need the machine or the cluster: the model's source and context
length, the reward modules and the environment class (imported here, within
``reward.import_timeout_s``; the class must have ``reset`` and ``step`` and take its ``kwargs``), the
checkpoint to resume from, the run directory's place inside ``tracking.run_root``, and
whether the cluster holds the CPUs, GPUs and custom resources the placement asks for (Ray
would otherwise wait for them forever). Each raises ``RecipeError`` (or ``ValueError``)
naming the key at fault.
"""

import inspect
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward.loader import resolve
from rlstack import models
from rlstack.checkpoint import check_resumable
from rlstack.config import RANDOM_PREFIX, EnvironmentSection, Recipe, RecipeError
from rlstack.environment import check_class
from rlstack.lora import ADAPTER_DIR, check_targets


def preflight(recipe: Recipe, run_dir: Path) -> None:
    """The checks that need this machine but no Ray; ``run_dir`` is where the run would write."""
    models.check_source(recipe.model.path)
    check_run_dir(recipe, run_dir)
    check_context(recipe, context_length(recipe.model.path))
    if recipe.model.lora is not None:
        check_targets(recipe.model.lora, [name for name, _ in models.parameter_shapes(recipe.model.path)])
    if (Path(recipe.model.path) / ADAPTER_DIR).is_dir():
        raise RecipeError(
            f"model.path={recipe.model.path!r} is a LoRA checkpoint, whose weights are the base model's alone: start "
            "from its merged export (rlstack export CHECKPOINT OUT --merge, then model.path=OUT)"
        )
    for index, function in enumerate(recipe.reward.functions):
        resolve(function.fn, f"reward.functions.{index}.fn", recipe.reward.import_timeout_s)
    if recipe.rollout.environment is not None:
        check_environment(recipe.rollout.environment, recipe.reward.import_timeout_s)
    if recipe.checkpoint.resume_from:
        check_resumable(recipe.checkpoint.resume_from, recipe.trainer.backend)


def check_run_dir(recipe: Recipe, run_dir: Path) -> None:
    """``run_dir``, with symbolic links followed, must be a directory directly inside ``tracking.run_root``."""
    root = Path(recipe.tracking.run_root).expanduser().resolve()
    if run_dir.resolve().parent != root:
        raise RecipeError(
            f"tracking.name={recipe.tracking.name!r}: the run directory {str(run_dir.resolve())!r} is not inside "
            f"tracking.run_root={str(root)!r}"
        )


def context_length(path: str) -> int | None:
    """Longest sequence the model at ``path`` takes (its config's ``max_position_embeddings``), if it says."""
    if path.startswith(RANDOM_PREFIX):
        return models.random_config(path.removeprefix(RANDOM_PREFIX), vocab_size=1).max_position_embeddings
    config = json.loads((Path(models.resolve(path)) / "config.json").read_text())
    return config.get("max_position_embeddings")


def check_environment(section: EnvironmentSection, import_timeout_s: float) -> None:
    """``rollout.environment.fn`` imports and names a class with ``reset`` and ``step`` that takes ``kwargs``."""
    cls = resolve(section.fn, "rollout.environment.fn", import_timeout_s)
    try:
        check_class(cls, "rollout.environment.fn")
        inspect.signature(cls).bind(**section.kwargs)
    except TypeError as exc:
        raise RecipeError(f"rollout.environment: {section.fn!r}: {exc}") from None


def check_context(recipe: Recipe, context: int | None) -> None:
    """A prompt of ``data.max_prompt_tokens`` and a response of ``rollout.max_new_tokens`` (a trajectory of
    ``rollout.max_trajectory_tokens``, with an environment) must fit the model."""
    rollout = recipe.rollout
    budget = recipe.data.max_prompt_tokens + rollout.max_response_tokens
    if context is not None and budget > context:
        key = "max_trajectory_tokens" if rollout.environment is not None else "max_new_tokens"
        raise RecipeError(
            f"rollout.{key}={rollout.max_response_tokens} with data.max_prompt_tokens="
            f"{recipe.data.max_prompt_tokens} is {budget} tokens, more than model.path={recipe.model.path!r} "
            f"takes ({context})"
        )


@dataclass(frozen=True)
class Demand:
    """One kind of actor (or placement bundle) the run starts, and what each one asks Ray for."""

    count: int
    """How many of them."""
    count_key: str
    """The recipe key that sets ``count``."""
    resources: dict[str, tuple[float, str]]
    """Ray resource name: the amount one asks for, and the recipe key that sets it."""


def demands(recipe: Recipe) -> list[Demand]:
    """Every kind of actor the run starts, as ``TrainerGroup``, ``RolloutGroup`` and ``RewardPool`` ask for them."""
    p = recipe.placement

    def asks(prefix: str, cpus: float, gpus: float, custom: dict[str, float]) -> dict[str, tuple[float, str]]:
        found = {"CPU": (cpus, f"{prefix}_cpus"), "GPU": (gpus, f"{prefix}_gpus")}
        found |= {name: (amount, f"{prefix}_resources.{name}") for name, amount in custom.items()}
        return {name: (amount, key) for name, (amount, key) in found.items() if amount}

    lmdeploy_bundles = recipe.rollout.engine == "lmdeploy" and recipe.rollout.lmdeploy_executor == "ray"
    found = [
        Demand(p.num_trainer_ranks, "placement.num_trainer_ranks",
               asks("placement.trainer", p.trainer_cpus, p.trainer_gpus, p.trainer_resources)),
        Demand(p.num_rollout_workers * (recipe.rollout.tensor_parallel_size if lmdeploy_bundles else 1),
               "placement.num_rollout_workers", asks("placement.rollout", p.rollout_cpus, p.rollout_gpus,
                                                     p.rollout_resources)),
    ]  # fmt: skip
    if any(not f.dedicated for f in recipe.reward.functions):
        reward = asks("placement.reward", p.reward_cpus, 0.0, p.reward_resources)
        found.append(Demand(p.num_reward_workers, "placement.num_reward_workers", reward))
    environment = recipe.rollout.environment
    if environment is not None and environment.num_cpus:
        cpus = {"CPU": (environment.num_cpus, "rollout.environment.num_cpus")}
        found.append(Demand(environment.num_workers, "rollout.environment.num_workers", cpus))
    for index, f in enumerate(recipe.reward.functions):
        if f.dedicated:
            dedicated = asks("placement.reward", 0.0, 0.0, p.reward_resources)
            dedicated |= {
                name: (amount, f"reward.functions.{index}.num_{name.lower()}s")
                for name, amount in (("CPU", f.num_cpus), ("GPU", f.num_gpus))
                if amount
            }
            found.append(Demand(1, f"reward.functions.{index}.dedicated", dedicated))
    return found


def check_cluster(recipe: Recipe, nodes: list[dict[str, Any]]) -> None:
    """Refuse a placement the cluster cannot hold: an actor larger than every node, or more of a resource in all
    than the cluster has. ``nodes`` is ``ray.nodes()``; a cluster that adds nodes on demand is not foreseen."""
    alive = [node["Resources"] for node in nodes if node.get("Alive")]
    total: Counter[str] = Counter()
    for node in alive:
        total.update(node)
    kinds = demands(recipe)
    for demand in kinds:
        one = {name: amount for name, (amount, _) in demand.resources.items()}
        if not any(all(node.get(name, 0.0) >= amount for name, amount in one.items()) for node in alive):
            most = {name: max((node.get(name, 0.0) for node in alive), default=0.0) for name in one}
            short = [key for name, (amount, key) in demand.resources.items() if amount > most[name]]
            keys = ", ".join(short or [key for _, key in demand.resources.values()])
            raise RecipeError(f"{keys}: one actor asks for {one}, and no node has that much (the most on one: {most})")
    for name in sorted({name for demand in kinds for name in demand.resources}):
        parts = [(d.count, *d.resources[name], d.count_key) for d in kinds if name in d.resources]
        needed = sum(count * amount for count, amount, _, _ in parts)
        if needed > total[name] + 1e-9:
            terms = " + ".join(f"{count_key}={count} x {key}={amount:g}" for count, amount, key, count_key in parts)
            raise RecipeError(
                f"the placement asks for {needed:g} {name} in all ({terms}); the cluster has {total[name]:g}"
            )
