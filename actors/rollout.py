"""The rollout group: engine actors behind one interface."""

import os
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.calls import ActorGroup
from actors.placement import node_id, require_resources
from rlstack import lora, models
from rlstack.config import Recipe
from rlstack.data.split import chunks
from rlstack.logs import capture_output
from rlstack.types import Completion, SamplingParams
from rollout.registry import make_engine
from rollout.weight_broadcast import WeightGroup, plan_buckets


class RolloutWorker:
    """One engine in one actor. Ray runs one method at a time, so a weight sync never interleaves with generation."""

    def __init__(self, recipe: Recipe):
        capture_output("rollout")
        self.recipe = recipe
        torch.set_num_threads(recipe.placement.num_threads or os.cpu_count() or 1)
        self.engine = make_engine(recipe)

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)

    def update_weights(self, version: int, bucket_refs: list[ray.ObjectRef]) -> int:
        """Fetch buckets one at a time and install them; return the version now served."""
        self.engine.load_weights(version, (ray.get(ref) for ref in bucket_refs))
        return self.engine.policy_version

    def update_adapter(self, version: int, bucket_refs: list[ray.ObjectRef]) -> int:
        """Fetch the recipe's LoRA adapter (``model.lora``) and apply it; return the version now served."""
        section = self.recipe.model.lora
        assert section is not None, "the recipe checks that rollout.lora_sync=adapter comes with model.lora"
        adapter = {name: tensor for ref in bucket_refs for name, tensor in ray.get(ref).items()}
        self.engine.load_adapter(version, adapter, lora.scale(section))
        return self.engine.policy_version

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int) -> None:
        """Join the broadcast group and derive, once, the bucket plan trainer rank 0 sends by."""
        rollout = self.recipe.rollout
        self.wire_dtype = getattr(torch, rollout.dtype)
        shapes = models.parameter_shapes(self.recipe.model.path)
        self.bucket_plan = plan_buckets(shapes, rollout.bucket_mb, self.wire_dtype.itemsize)
        self.weight_group = WeightGroup(host, port, rank, world_size, self.recipe.placement.device)

    def receive_weights(self, version: int) -> int:
        """Install the buckets trainer rank 0 is broadcasting, each loaded as it arrives."""
        self.engine.load_weights(version, self.weight_group.receive(self.bucket_plan, self.wire_dtype))
        return self.engine.policy_version

    def policy_version(self) -> int:
        return self.engine.policy_version

    def node_id(self) -> str:
        return node_id()

    def sleep(self) -> None:
        self.engine.sleep()

    def fingerprint(self) -> dict[str, float]:
        return self.engine.fingerprint()


class RolloutGroup(ActorGroup):
    """M engine actors; a batch of prompts is split evenly across them.

    Every call waits at most ``rollout.timeout_s`` (``ActorGroup.gather``): an engine that dies or stops
    answering fails it with ``ActorFailure`` naming the worker and the call, and the group is torn down. An
    engine that fails to start raises its own error here, at construction, instead of at the first request.
    """

    name, member, timeout_setting = "rollout", "worker", "rollout.timeout_s"

    def __init__(self, recipe: Recipe):
        placement = recipe.placement
        self.timeout_s = recipe.rollout.timeout_s
        self.placement_groups: list[PlacementGroup] = []
        lmdeploy_workers = recipe.rollout.engine == "lmdeploy" and recipe.rollout.lmdeploy_executor == "ray"
        bundles_per_worker = recipe.rollout.tensor_parallel_size if lmdeploy_workers else 1
        require_resources(
            "rollout_resources", placement.rollout_resources, placement.num_rollout_workers * bundles_per_worker
        )
        if lmdeploy_workers:
            self.workers: list[Any] = [self._lmdeploy_worker(recipe) for _ in range(placement.num_rollout_workers)]
        else:
            actor = ray.remote(RolloutWorker).options(
                num_cpus=placement.rollout_cpus, num_gpus=placement.rollout_gpus, resources=placement.rollout_resources
            )
            self.workers = [actor.remote(recipe) for _ in range(placement.num_rollout_workers)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=recipe.rollout.start_timeout_s)
        except GetTimeoutError:
            self.shutdown()
            raise TimeoutError(
                f"rollout engines did not start within rollout.start_timeout_s={recipe.rollout.start_timeout_s}"
            ) from None
        except RayActorError as error:
            self.shutdown()
            raise RuntimeError(f"rollout engine failed to start: {engine_error(error)}") from None

    def _lmdeploy_worker(self, recipe: Recipe) -> Any:
        """An actor in a placement group of ``tensor_parallel_size`` GPU bundles, where LMDeploy's Ray executor
        places its workers; the actor itself only drives the pipeline. (With the ``uni`` executor the engine
        runs in a plain actor that holds the GPU share itself.)"""
        placement = recipe.placement
        bundle = {"GPU": placement.rollout_gpus, "CPU": placement.rollout_cpus, **placement.rollout_resources}
        bundles = [bundle] * recipe.rollout.tensor_parallel_size
        group = placement_group(bundles, strategy="PACK")
        self.placement_groups.append(group)
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        return ray.remote(RolloutWorker).options(num_cpus=0, num_gpus=0, scheduling_strategy=strategy).remote(recipe)

    def sleep(self) -> None:
        """Free the engines' GPU memory until the next weight sync (LMDeploy)."""
        self.gather([w.sleep.remote() for w in self.workers], "sleep")

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order; worker ``i`` samples with seed ``params.seed + i``."""
        futures = [
            worker.generate.remote(part, SamplingParams(**{**vars(params), "seed": params.seed + i}))
            for i, (worker, part) in enumerate(zip(self.workers, chunks(prompts, len(self.workers)), strict=False))
        ]
        return [group for part in self.gather(futures, "generate") for group in part]

    def update_weights(self, version: int, bucket_refs: list[ray.ObjectRef]) -> list[int]:
        return self.gather([w.update_weights.remote(version, bucket_refs) for w in self.workers], "update_weights")

    def update_adapter(self, version: int, bucket_refs: list[ray.ObjectRef]) -> list[int]:
        return self.gather([w.update_adapter.remote(version, bucket_refs) for w in self.workers], "update_adapter")

    def join_weight_group(self, host: str, port: int) -> list[ray.ObjectRef]:
        """Engine ``i`` joins as rank ``i + 1``; returns at once, as the trainer joins at the same time."""
        world_size = len(self.workers) + 1
        return [w.join_weight_group.remote(host, port, i + 1, world_size) for i, w in enumerate(self.workers)]

    def receive_weights(self, version: int) -> list[int]:
        return self.gather([w.receive_weights.remote(version) for w in self.workers], "receive_weights")

    def nodes(self) -> list[str]:
        """The node of each engine actor."""
        return self.gather([w.node_id.remote() for w in self.workers], "node_id")

    def shutdown(self) -> None:
        """Kill the engines and free their placement groups; a second call does nothing."""
        for worker in self.workers:
            ray.kill(worker)
        for group in self.placement_groups:
            remove_placement_group(group)
        self.workers, self.placement_groups = [], []


def engine_error(error: RayActorError) -> str:
    """The exception an actor's constructor raised, as ``Type: message``, else Ray's own message."""
    cause = getattr(error, "cause", None)
    init_error = getattr(cause, "cause", cause)  # RayTaskError wraps the original exception
    return f"{type(init_error).__name__}: {init_error}" if isinstance(init_error, Exception) else str(error)
