"""The trainer group: one Ray actor per rank, in a placement group, training through FSDP2 or DeepSpeed ZeRO."""

import os
import socket
from collections.abc import Iterator
from typing import Any, TypeVar

import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from safetensors.torch import load_file

from actors.calls import ActorGroup
from actors.fsdp2_backend import FSDP2Backend
from actors.objectives import HeldOutLoss, ItemLogprobs, Objective, Policy, make_objective
from actors.placement import node_id, require_resources
from rlstack import checkpoint, models
from rlstack.colocation import GpuMemory
from rlstack.config import Recipe
from rlstack.logs import capture_output
from rlstack.lora import ADAPTER_DIR, ADAPTER_FILE
from rlstack.types import PreferenceBatch, PreferencePair, Sample, SFTBatch, SFTExample, TrainBatch
from rollout.registry import pack_bucket
from rollout.weight_broadcast import WeightGroup, flatten, plan_buckets

PLACEMENT_TIMEOUT_S = 300
"""Limit on placing the group and on starting its ranks (rendezvous, building the model), in seconds."""
T = TypeVar("T")


class TrainerWorker:
    """One rank (FSDP2 or DeepSpeed): the policy (and optional frozen reference), AdamW and the LR schedule, and
    the recipe's objective (``actors.objectives``), which one loop (``step``) trains."""

    def __init__(self, recipe: Recipe, rank: int, world_size: int):
        capture_output("trainer", rank)
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(recipe.placement.device)
        self.sent_buckets: list[torch.Tensor] = []  # flat GPU buckets behind the last cuda_ipc sync
        self.update_peak_gib: float | None = None  # the most allocated during the last update, on a GPU
        torch.set_num_threads(recipe.placement.num_threads or os.cpu_count() or 1)

    def rendezvous_address(self) -> tuple[str, int]:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the group's rendezvous and build the policy, the reference (if one is needed) and the optimizer."""
        recipe = self.recipe
        if self.device.type == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly this actor's GPU
        self.tokenizer = models.load_tokenizer(recipe.model.path)
        algo = recipe.algorithm
        needs_reference = algo.kl_coef > 0 if algo.name == "grpo" else algo.name == "dpo" and algo.reference == "online"
        init_method = f"tcp://{master_addr}:{master_port}"
        if recipe.trainer.backend == "deepspeed":
            from actors.deepspeed_backend import DeepSpeedBackend

            self.backend: FSDP2Backend | DeepSpeedBackend = DeepSpeedBackend(
                recipe, self.rank, self.world_size, init_method, needs_reference
            )
        else:
            self.backend = FSDP2Backend(recipe, self.rank, self.world_size, init_method, needs_reference)
        self.model = self.backend.model
        self.adapter = self.backend.adapter if isinstance(self.backend, FSDP2Backend) else None  # model.lora's
        attention = recipe.trainer.attention
        assert attention != "auto", "the recipe resolves trainer.attention"
        self.policy = Policy(self.model, self.backend.reference, self.device, self.tokenizer.pad_token_id, attention)
        self.objectives: dict[str, Objective] = {}
        self.parameter_shapes = models.parameter_shapes(recipe.model.path)  # the bucket plan's input, every sync
        self.num_optimizer_steps = 0

    def _aligned(self, groups: list[T], padding: T) -> list[T]:
        """``groups`` plus ``padding`` up to the largest count of any rank, so all run the same FSDP collectives."""
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [padding] * (int(count) - len(groups))

    def _optimizer_step(self) -> dict[str, float]:
        """Clip the gradients, step AdamW and the LR schedule; returns ``grad_norm``, the ``lr`` used and, on a
        GPU, ``memory/peak_gib``: the most memory this rank allocated since the last step."""
        self.num_optimizer_steps += 1
        metrics = self.backend.step()
        if self.device.type == "cuda":
            metrics["memory/peak_gib"] = self.update_peak_gib = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return metrics

    def free_cached_memory(self) -> None:
        """Give the allocator's unused blocks back to the GPU, so that a sleeping engine wakes into them."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def gpu_memory(self) -> GpuMemory | None:
        """This rank's GPU memory between updates; ``None`` before the first update or off the GPU."""
        if self.update_peak_gib is None:
            return None
        free, _ = torch.cuda.mem_get_info()
        return GpuMemory(
            free / 2**30, torch.cuda.memory_allocated() / 2**30, torch.cuda.memory_reserved() / 2**30,
            self.update_peak_gib,
        )  # fmt: skip

    def _objective(self, name: str | None) -> Objective:
        """The objective called ``name``, by default the recipe's ``algorithm.name``; built on first use."""
        name = name or self.recipe.algorithm.name
        if name not in self.objectives:
            self.objectives[name] = make_objective(self.recipe, self.tokenizer.pad_token_id, name)
        return self.objectives[name]

    def step(
        self, batch: TrainBatch | SFTBatch | PreferenceBatch, objective_name: str | None = None
    ) -> dict[str, float]:
        """One optimizer step of the objective (the recipe's unless named) over this rank's share of ``batch``.

        The objective cuts the share into micro-batches (aligned in number across ranks) and gives each one's
        loss, its share of the whole batch's loss, so the backend only undoes its averaging over ranks.
        """
        objective = self._objective(objective_name)
        self.model.train()
        sums = torch.zeros(len(objective.sum_names), dtype=torch.float64, device=self.device)
        for micro_batch in self._aligned(objective.micro_batches(batch), objective.padding(batch)):
            loss, micro_sums = objective.loss(self.policy, batch, micro_batch)
            self.backend.backward(loss)
            sums += micro_sums
        step = self._optimizer_step()
        dist.all_reduce(sums)
        return {**objective.metrics(dict(zip(objective.sum_names, sums.tolist(), strict=True))), **step}

    def logprobs(self, data: list[Sample] | list[PreferencePair], objective_name: str | None = None) -> list[Any]:
        """The policy's logprobs of each item, in order: each sample's response tokens (GRPO), each pair's
        ``(chosen, rejected)`` sums (DPO)."""
        objective = self._objective(objective_name)
        if not isinstance(objective, ItemLogprobs):
            raise TypeError(f"{type(objective).__name__} scores no items; logprobs needs GRPO's or DPO's objective")
        self.model.eval()
        return objective.logprobs(self.policy, data, self._aligned)

    def evaluate(self, examples: list[SFTExample]) -> dict[str, float]:
        """Held-out metrics of the objective over all ranks' shares (SFT: mean negative log-likelihood)."""
        objective = self._objective(None)
        if not isinstance(objective, HeldOutLoss):
            raise TypeError(f"{type(objective).__name__} has no held-out loss; evaluate needs SFT's objective")
        self.model.eval()
        sums = objective.evaluate(self.policy, examples, self._aligned)
        dist.all_reduce(sums)
        return objective.evaluation_metrics(sums)

    @torch.no_grad()
    def full_buckets(
        self, bucket_mb: int, dtype: str, device: torch.device, merge_adapter: bool = True
    ) -> Iterator[dict[str, torch.Tensor]]:
        """The full (unsharded) weights in ``dtype`` on ``device``, in the buckets ``plan_buckets`` cuts, under the
        base model's names; with LoRA, adapted weights merged (``W + s * B @ A``) or, ``merge_adapter=False``, the
        base ``W`` alone.

        Every rank takes part in gathering each bucket; only rank 0 yields buckets.
        """
        wire = getattr(torch, dtype)
        adapter = self.adapter
        for entries in plan_buckets(self.parameter_shapes, bucket_mb, wire.itemsize):
            names = [name for name, _ in entries]
            with self.backend.gathered(adapter.sources(names, merge_adapter) if adapter else names) as params:
                full = adapter.merged(names, params, merge_adapter) if adapter else params
                bucket = {name: tensor.detach().to(device, wire, copy=True) for name, tensor in full}
            if self.rank == 0:
                yield bucket

    @torch.no_grad()
    def adapter_buckets(self, dtype: str) -> list[ray.ObjectRef]:
        """The LoRA adapter's tensors in ``dtype`` (PEFT's file names), as one object-store bucket; rank 0 returns
        its ref, the other ranks an empty list. Every rank takes part in gathering."""
        adapter = self.adapter
        assert adapter is not None, "the recipe sets model.lora"
        with self.backend.gathered(adapter.adapter_names) as params:
            bucket = adapter.adapter_state(
                (name, t.detach().to("cpu", getattr(torch, dtype), copy=True)) for name, t in params
            )
        return [ray.put(bucket)] if self.rank == 0 else []

    def state_dict_buckets(
        self,
        bucket_mb: int,
        dtype: str,
        transport: str = "object_store",
        engine: str = "vllm",
        merge_adapter: bool = True,
    ) -> list[ray.ObjectRef]:
        """The full weights (``full_buckets``) as object-store buckets of about ``bucket_mb`` MB; rank 0 returns
        their refs, the other ranks an empty list. With ``cuda_ipc`` a bucket stays on this GPU as one flat tensor
        and the object store carries only its CUDA IPC handle, in the engine's format
        (``rollout.registry.pack_bucket``); the tensor lives until ``release_buckets``.
        """
        device = self.device if transport == "cuda_ipc" else torch.device("cpu")
        buckets = self.full_buckets(bucket_mb, dtype, device, merge_adapter)
        return [self._put_bucket(bucket, transport, engine) for bucket in buckets]

    def _put_bucket(self, bucket: dict[str, torch.Tensor], transport: str, engine: str) -> ray.ObjectRef:
        if transport == "object_store":
            return ray.put(bucket)
        handle, flat = pack_bucket(engine, bucket)
        self.sent_buckets.append(flat)
        return ray.put(handle)

    def release_buckets(self) -> None:
        """Free the GPU buckets of the last ``cuda_ipc`` sync, once every engine has loaded them."""
        self.sent_buckets.clear()

    def join_weight_group(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 joins the broadcast group with the engines, as its rank 0 (hosting the store)."""
        if self.rank == 0:
            self.weight_group = WeightGroup(host, port, 0, world_size, self.recipe.placement.device)

    def broadcast_weights(self, bucket_mb: int, dtype: str) -> None:
        """Rank 0 broadcasts each bucket as one flat tensor; the engines derive the same plan."""
        for bucket in self.full_buckets(bucket_mb, dtype, self.device):
            self.weight_group.broadcast(flatten(bucket))

    @torch.no_grad()
    def fingerprint(self) -> dict[str, float]:
        """``{name: sum of the full parameter}`` in float64."""
        names = [name for name, _ in self.backend.module.named_parameters()]
        with self.backend.gathered(names) as params:
            return {name: full.double().sum().item() for name, full in params}

    def node_id(self) -> str:
        return node_id()

    @ray.method(concurrency_group="health")
    def alive(self) -> bool:
        """Answered from a thread of its own, even while ``step`` waits in a collective on a stopped peer."""
        return True

    def load(self, uri: str) -> None:
        """Continue from a checkpoint written by ``save``: weights, optimizer, scheduler and RNG; every file is
        checked against the checkpoint's manifest first."""
        with checkpoint.readable(uri, verify=True) as path:
            files = sorted(path.glob("*.safetensors"))
            weights: dict[str, Any] = {name: tensor for file in files for name, tensor in load_file(file).items()}
            if adapter := self.adapter:
                tensors = load_file(path / ADAPTER_DIR / ADAPTER_FILE)
                weights = adapter.model_state(weights, tensors, self.backend.module.state_dict())
            state = torch.load(path / "trainer_state.pt", weights_only=False)
        self.backend.load(weights, state.get("optimizer"), uri)
        self.backend.scheduler.load_state_dict(state["scheduler"])
        self.num_optimizer_steps = state["num_optimizer_steps"]
        torch.set_rng_state(state["rng"])

    def save(self, uri: str, optimizer: bool, files: dict[str, str]) -> checkpoint.Manifest:
        """HF safetensors and tokenizer at ``uri`` (a checkpoint's staging place, ``checkpoint.staging_uri``),
        plus optimizer and trainer state and ``files`` (name: text); rank 0 returns the manifest of what it
        wrote, the other ranks an empty one."""
        if self.rank == 0:
            checkpoint.begin(uri)
        weights, optim_state = self.backend.state_dicts(optimizer, uri)
        if self.rank != 0:
            return {}
        trainer_state: dict[str, Any] = {
            "num_optimizer_steps": self.num_optimizer_steps,
            "scheduler": self.backend.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if optim_state is not None:
            trainer_state["optimizer"] = optim_state
        with checkpoint.writable(uri) as target:
            if adapter := self.adapter:  # the base model's weights, and adapter/
                adapter.save(target / ADAPTER_DIR, adapter.adapter_state(weights.items()))
                weights = adapter.base_state(weights)
            self.backend.module.save_pretrained(target, state_dict=weights)
            self.tokenizer.save_pretrained(target)
            torch.save(trainer_state, target / "trainer_state.pt")
            for name, text in files.items():
                (target / name).write_text(text)
            return checkpoint.manifest_of(target)

    def commit(self, uri: str, staging: str, written: checkpoint.Manifest, keep_last: int | None) -> None:
        """Rank 0 makes the checkpoint staged at ``staging`` complete at ``uri`` (``checkpoint.commit``), then
        keeps only the newest ``keep_last`` checkpoints beside it."""
        checkpoint.commit(uri, staging, written)
        if keep_last is not None:
            checkpoint.prune(uri.rstrip("/").rsplit("/", 1)[0], keep_last)


class TrainerGroup(ActorGroup):
    """N ``TrainerWorker`` actors, one per rank, in a placement group from the recipe.

    Every call waits at most ``trainer.timeout_s`` (``ActorGroup.gather``): a rank that dies or stops answering
    fails it with ``ActorFailure`` naming the rank and the call, and the group is torn down.
    """

    name, member, timeout_setting, health_checked = "trainer", "rank", "trainer.timeout_s", True

    def __init__(self, recipe: Recipe):
        placement = recipe.placement
        self.timeout_s = recipe.trainer.timeout_s
        require_resources("trainer_resources", placement.trainer_resources, placement.num_trainer_ranks)
        bundle = {"CPU": placement.trainer_cpus, "GPU": placement.trainer_gpus, **placement.trainer_resources}
        group = placement_group(
            [{k: v for k, v in bundle.items() if v}] * placement.num_trainer_ranks, strategy=placement.strategy
        )
        self.placement_groups = [group]
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"the trainer placement group ({placement.num_trainer_ranks} x {bundle}) could not be placed "
                f"within {PLACEMENT_TIMEOUT_S}s; the cluster has {ray.available_resources()} free"
            ) from None
        actor = ray.remote(concurrency_groups={"health": 1})(TrainerWorker)  # type: ignore[call-overload]  # Ray types only @ray.remote(cls)
        self.workers = [
            actor.options(
                num_cpus=placement.trainer_cpus,
                num_gpus=placement.trainer_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, bundle_index),
            ).remote(recipe, bundle_index, placement.num_trainer_ranks)
            for bundle_index in range(placement.num_trainer_ranks)
        ]
        address = self.gather([self.workers[0].rendezvous_address.remote()], "rendezvous_address", PLACEMENT_TIMEOUT_S)
        self.gather([w.setup.remote(*address[0]) for w in self.workers], "setup", PLACEMENT_TIMEOUT_S)

    def step(
        self, shards: list[TrainBatch] | list[SFTBatch] | list[PreferenceBatch], objective_name: str | None = None
    ) -> dict[str, float]:
        """One optimizer step of the recipe's objective (or the one named), rank ``i`` on ``shards[i]``; returns
        rank 0's metrics (the sums are all-reduced)."""
        return self.gather(
            [w.step.remote(s, objective_name) for w, s in zip(self.workers, shards, strict=True)], "step"
        )[0]

    def logprobs(
        self, shards: list[list[Sample]] | list[list[PreferencePair]], objective_name: str | None = None
    ) -> list[list[Any]]:
        """Each rank's ``TrainerWorker.logprobs`` of its shard."""
        refs = [w.logprobs.remote(s, objective_name) for w, s in zip(self.workers, shards, strict=True)]
        return self.gather(refs, "logprobs")

    def evaluate(self, shards: list[list[SFTExample]]) -> dict[str, float]:
        return self.gather([w.evaluate.remote(s) for w, s in zip(self.workers, shards, strict=True)], "evaluate")[0]

    def state_dict_buckets(
        self,
        bucket_mb: int,
        dtype: str,
        transport: str = "object_store",
        engine: str = "vllm",
        merge_adapter: bool = True,
    ) -> list[ray.ObjectRef]:
        refs = [w.state_dict_buckets.remote(bucket_mb, dtype, transport, engine, merge_adapter) for w in self.workers]
        return self.gather(refs, "state_dict_buckets")[0]

    def adapter_buckets(self, dtype: str) -> list[ray.ObjectRef]:
        return self.gather([w.adapter_buckets.remote(dtype) for w in self.workers], "adapter_buckets")[0]

    def release_buckets(self) -> None:
        self.gather([w.release_buckets.remote() for w in self.workers], "release_buckets")

    def free_cached_memory(self) -> None:
        self.gather([w.free_cached_memory.remote() for w in self.workers], "free_cached_memory")

    def gpu_memory(self) -> list[GpuMemory | None]:
        """Each rank's GPU memory between updates (``None`` before the first update or off the GPU)."""
        return self.gather([w.gpu_memory.remote() for w in self.workers], "gpu_memory")

    def weight_group_address(self) -> tuple[str, int]:
        """Host and a free port on rank 0's node, for the broadcast group's store."""
        return self.gather([self.workers[0].rendezvous_address.remote()], "rendezvous_address")[0]

    def join_weight_group(self, host: str, port: int, world_size: int) -> list[ray.ObjectRef]:
        """Returns at once: the engines must join at the same time."""
        return [w.join_weight_group.remote(host, port, world_size) for w in self.workers]

    def broadcast_weights(self, bucket_mb: int, dtype: str) -> list[ray.ObjectRef]:
        """Returns at once: the engines receive while rank 0 sends."""
        return [w.broadcast_weights.remote(bucket_mb, dtype) for w in self.workers]

    def fingerprint(self) -> dict[str, float]:
        return self.gather([w.fingerprint.remote() for w in self.workers], "fingerprint")[0]

    def nodes(self) -> list[str]:
        """The node of each rank."""
        return self.gather([w.node_id.remote() for w in self.workers], "node_id")

    def save(self, uri: str, optimizer: bool, files: dict[str, str], keep_last: int | None = None) -> None:
        """A checkpoint at ``uri`` that is complete or absent: every rank writes its part at a staging place,
        then rank 0 commits it (``rlstack.checkpoint``) and prunes to the newest ``keep_last``."""
        staging = checkpoint.staging_uri(uri)
        written = self.gather([w.save.remote(staging, optimizer, files) for w in self.workers], "save")[0]
        self.gather([self.workers[0].commit.remote(uri, staging, written, keep_last)], "save")

    def load(self, path: str) -> None:
        self.gather([w.load.remote(path) for w in self.workers], "load")

    def wait(self, refs: list[ray.ObjectRef], call: str) -> list[Any]:
        """The results of calls made by a method that returns at once (``broadcast_weights``), within the
        deadline."""
        return self.gather(refs, call)

    def shutdown(self) -> None:
        """Kill the ranks and free their placement group; a second call does nothing."""
        for worker in self.workers:
            ray.kill(worker)
        for group in self.placement_groups:
            remove_placement_group(group)
        self.workers, self.placement_groups = [], []
