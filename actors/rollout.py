"""The rollout group: engine actors behind one interface."""

import os
from typing import Any

import ray

from rlstack.config import Recipe
from rlstack.types import Completion, SamplingParams
from rollout.registry import make_engine


class RolloutWorker:
    """One engine in one actor. Ray runs one method at a time, so a weight sync never interleaves with generation."""

    def __init__(self, recipe: Recipe):
        import torch

        torch.set_num_threads(recipe.placement.num_threads or os.cpu_count() or 1)
        self.engine = make_engine(recipe)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)

    def update_weights(self, version: int, bucket_refs: list[ray.ObjectRef]) -> int:
        """Fetch buckets one at a time and install them; return the version now served."""
        self.engine.load_weights(version, (ray.get(ref) for ref in bucket_refs))
        return self.engine.policy_version

    def policy_version(self) -> int:
        return self.engine.policy_version

    def fingerprint(self) -> dict[str, float]:
        return self.engine.fingerprint()


class RolloutGroup:
    """M engine actors; a batch of prompts is split evenly across them."""

    def __init__(self, recipe: Recipe):
        placement = recipe.placement
        actor = ray.remote(RolloutWorker).options(num_cpus=placement.rollout_cpus, num_gpus=placement.rollout_gpus)
        self.workers: list[Any] = [actor.remote(recipe) for _ in range(placement.num_rollout_workers)]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order; worker ``i`` samples with seed ``params.seed + i``."""
        num = len(self.workers)
        chunk = -(-len(prompts) // num)
        futures = [
            worker.generate.remote(
                prompts[i * chunk : (i + 1) * chunk], SamplingParams(**{**vars(params), "seed": params.seed + i})
            )
            for i, worker in enumerate(self.workers)
            if prompts[i * chunk : (i + 1) * chunk]
        ]
        return [group for part in ray.get(futures) for group in part]

    def update_weights(self, version: int, bucket_refs: list[ray.ObjectRef]) -> list[int]:
        return ray.get([w.update_weights.remote(version, bucket_refs) for w in self.workers])

    def policy_versions(self) -> list[int]:
        return ray.get([w.policy_version.remote() for w in self.workers])

    def fingerprints(self) -> list[dict[str, float]]:
        return ray.get([w.fingerprint.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
