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

from actors.fsdp2_backend import FSDP2Backend
from actors.placement import node_id, require_resources
from rlstack import models
from rlstack.algorithms import aggregate, at_temperature, clipped_surrogate, kl_penalty, token_entropy, token_logprobs
from rlstack.algorithms.dpo import comparable_logprobs, dpo_loss
from rlstack.algorithms.sft import sft_loss
from rlstack.checkpoint import readable, writable
from rlstack.colocation import GpuMemory
from rlstack.config import Recipe
from rlstack.data.batching import (
    collate,
    micro_batches,
    padding_sample,
    pair_lengths,
    response_sample,
)
from rlstack.data.packing import PackedRow, SFTExample, attention_mask_from_positions, collate_packed, pack
from rlstack.data.shared_prompt import collate_shared_prompt, shared_prompt_rows
from rlstack.forward import padded_response_logits, shared_prompt_logits
from rlstack.types import PreferenceBatch, PreferencePair, Sample, SFTBatch, TrainBatch
from rollout.lmdeploy_engine import serialize_flattened
from rollout.shared_bucket import share
from rollout.weight_broadcast import WeightGroup, flatten, plan_buckets

PLACEMENT_TIMEOUT_S = 300
T = TypeVar("T")


class TrainerWorker:
    """One FSDP2 rank: the policy (and optional frozen reference), AdamW and the LR schedule."""

    def __init__(self, recipe: Recipe, rank: int, world_size: int):
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
        self.reference = self.backend.reference
        self.parameter_shapes = models.parameter_shapes(recipe.model.path)  # the bucket plan's input, every sync
        self.num_optimizer_steps = 0

    def _aligned(self, groups: list[T], padding: T) -> list[T]:
        """``groups`` plus ``padding`` up to the largest count of any rank, so all run the same FSDP collectives."""
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [padding] * (int(count) - len(groups))

    def _aligned_micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        groups = micro_batches(samples, self.recipe.trainer.micro_batch_tokens)
        return self._aligned(groups, [padding_sample(samples[0])])

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

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step of the PPO-clip surrogate over this rank's samples.

        The samples run as shared-prompt rows (``rlstack.data.shared_prompt``). Each
        micro-batch's loss is its share of the whole batch's loss (normalisers come from
        the batch); the backend undoes its averaging of gradients over ranks.
        """
        algo = self.recipe.algorithm
        self.model.train()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # loss, tokens, clipped, entropy, kl, |dlogp|
        samples = list(batch.samples)
        temperature = self.recipe.rollout.temperature
        rows = shared_prompt_rows(samples, self.recipe.trainer.micro_batch_tokens)
        for row in self._aligned(rows, [[padding_sample(samples[0])]]):
            data = collate_shared_prompt(row, self.tokenizer.pad_token_id)
            mask = data.response_mask.to(self.device)
            targets = data.token_ids.to(self.device)
            logits = at_temperature(shared_prompt_logits(self.model, data, self.device), temperature)
            logprobs = data.scatter(token_logprobs(logits, targets))  # [B, R]
            old = data.old_logprobs.to(self.device)
            token_loss, clipped = clipped_surrogate(
                logprobs, old, data.advantages.to(self.device), algo.clip_low, algo.clip_high
            )
            kl = torch.zeros_like(token_loss)
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = shared_prompt_logits(self.reference, data, self.device)
                    ref = data.scatter(token_logprobs(ref_logits, targets, temperature))
                kl = kl_penalty(logprobs, ref, algo.kl_estimator)
                token_loss = token_loss + algo.kl_coef * kl
            loss = aggregate(token_loss, mask, algo.loss_agg, batch.num_tokens, batch.num_seqs, batch.max_tokens)
            self.backend.backward(loss)
            sums += torch.stack(
                [
                    loss.detach().double(),
                    mask.sum().double(),
                    (clipped * mask).sum().double(),
                    (data.scatter(token_entropy(logits.detach())) * mask).sum().double(),
                    (kl.detach() * mask).sum().double(),
                    ((logprobs.detach() - old).abs() * mask).sum().double(),
                ]
            )
        step = self._optimizer_step()
        dist.all_reduce(sums)
        loss, tokens, clipped_sum, entropy, kl_sum, mismatch = sums.tolist()
        tokens = max(tokens, 1.0)
        return {
            "loss": loss,
            "clip_fraction": clipped_sum / tokens,
            "entropy": entropy / tokens,
            "kl": kl_sum / tokens,
            "logprob_mismatch": mismatch / tokens,
            **step,
        }

    def _packed_rows(self, examples: list[SFTExample]) -> list[PackedRow]:
        """This rank's examples packed into rows of at most ``micro_batch_tokens``, aligned across ranks."""
        pad_id = self.tokenizer.pad_token_id
        rows = [
            collate_packed(group, pad_id, sum(len(e.input_ids) for e in group))
            for group in (
                [examples[i] for i in indices]
                for indices in pack([len(e.input_ids) for e in examples], self.recipe.trainer.micro_batch_tokens)
            )
        ]
        return self._aligned(rows, collate_packed([SFTExample((pad_id,), (0,))], pad_id, 1))

    def _packed_logprobs(self, row: PackedRow) -> torch.Tensor:
        """``[1, L]`` logprobs of each packed position's target, every sample attending only to itself."""
        position_ids = row.position_ids.to(self.device)
        logits = self.model(
            input_ids=row.input_ids.to(self.device),
            position_ids=position_ids,
            attention_mask=attention_mask_from_positions(position_ids),
            use_cache=False,
        ).logits
        return token_logprobs(logits, row.target_ids.to(self.device))

    def sft_step(self, batch: SFTBatch) -> dict[str, float]:
        """One optimizer step of masked cross-entropy; the rank's examples are packed into micro-batches."""
        self.model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, tokens
        for row in self._packed_rows(list(batch.examples)):
            mask = row.target_mask.to(self.device)
            loss, _ = sft_loss(self._packed_logprobs(row), mask, batch.num_tokens)
            self.backend.backward(loss)
            sums += torch.stack([loss.detach().double(), mask.sum().double()])
        step = self._optimizer_step()
        dist.all_reduce(sums)
        return {"loss": sums[0].item(), "num_tokens": sums[1].item(), **step}

    @torch.no_grad()
    def sft_eval(self, examples: list[SFTExample]) -> dict[str, float]:
        """Mean negative log-likelihood per trained token of held-out examples, over all ranks' shares."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # nll, tokens
        for row in self._packed_rows(examples):
            mask = row.target_mask.to(self.device)
            sums += torch.stack([-(self._packed_logprobs(row) * mask).sum().double(), mask.sum().double()])
        dist.all_reduce(sums)
        return {"loss": (sums[0] / sums[1].clamp(min=1)).item(), "num_tokens": sums[1].item()}

    def _pair_micro_batches(self, pairs: list[PreferencePair]) -> list[list[int] | None]:
        """Pair indices per micro-batch (chosen and rejected together fill ``2 * n * longest`` tokens), aligned
        across ranks with ``None`` for a padding micro-batch."""
        groups: list[list[int] | None] = []
        current: list[int] = []
        longest = 0
        for i, p in enumerate(pairs):
            size = len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))
            if current and 2 * (len(current) + 1) * max(longest, size) > self.recipe.trainer.micro_batch_tokens:
                groups.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, size)
        if current:
            groups.append(current)
        return self._aligned(groups, None)

    def _pair_logprobs(self, model: torch.nn.Module, pairs: list[PreferencePair]) -> torch.Tensor:
        """``[2, n]`` summed logprobs of the chosen (row 0) and rejected (row 1) responses."""
        samples = [response_sample(p.prompt_ids, p.chosen_ids) for p in pairs]
        samples += [response_sample(p.prompt_ids, p.rejected_ids) for p in pairs]
        data = collate(samples, self.tokenizer.pad_token_id)
        logprobs = token_logprobs(padded_response_logits(model, data, self.device), data.response_ids.to(self.device))
        return (logprobs * data.response_mask.to(self.device)).sum(-1).view(2, len(pairs))

    def dpo_step(self, batch: PreferenceBatch) -> dict[str, float]:
        """One optimizer step of the DPO (or IPO, cDPO) loss over this rank's pairs.

        IPO compares logprobs averaged over each response's tokens; DPO compares sums.
        """
        algo = self.recipe.algorithm
        self.model.train()
        pairs = list(batch.pairs)
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # loss, chosen, rejected, margin, accuracy
        for group in self._pair_micro_batches(pairs):
            members = [pairs[i] for i in group] if group is not None else pairs[:1]
            policy = self._pair_logprobs(self.model, members)  # [2, n]
            if batch.reference is not None:
                reference = torch.tensor([batch.reference[i] for i in (group or [0])], device=self.device).T
            else:
                with torch.no_grad():
                    reference = self._pair_logprobs(self.reference, members)  # type: ignore[arg-type]
            lengths = pair_lengths(members).to(self.device)
            policy = comparable_logprobs(policy, lengths, algo.dpo_loss)
            reference = comparable_logprobs(reference, lengths, algo.dpo_loss)
            loss, metrics = dpo_loss(
                policy[0],
                policy[1],
                reference[0],
                reference[1],
                batch.num_pairs,
                algo.beta,
                algo.label_smoothing,
                algo.dpo_loss,
            )
            weight = 0.0 if group is None else 1.0  # a padding micro-batch only keeps the collectives in step
            self.backend.backward(loss * weight)
            sums += weight * torch.stack([loss.detach().double(), *(m.double() for m in metrics.values())])
        step = self._optimizer_step()
        dist.all_reduce(sums)
        loss, chosen_reward, rejected_reward, margin, accuracy = sums.tolist()
        return {
            "loss": loss,
            "rewards/chosen": chosen_reward,
            "rewards/rejected": rejected_reward,
            "rewards/margin": margin,
            "rewards/accuracy": accuracy,
            **step,
        }

    @torch.no_grad()
    def pair_logprobs(self, pairs: list[PreferencePair]) -> list[tuple[float, float]]:
        """Policy logprobs ``(chosen, rejected)`` of each pair, summed over the response tokens."""
        self.model.eval()
        result: list[tuple[float, float]] = []
        for group in self._pair_micro_batches(pairs):
            logprobs = self._pair_logprobs(self.model, [pairs[i] for i in group] if group else pairs[:1])
            if group is not None:
                result += [(c, r) for c, r in logprobs.T.tolist()]
        return result

    @torch.no_grad()
    def compute_logprobs(self, samples: list[Sample]) -> list[list[float]]:
        """Policy logprobs of each sample's response tokens, at the sampling temperature, in ``samples`` order."""
        self.model.eval()
        result: dict[int, list[float]] = {}  # by id(sample): micro-batches sort samples by length
        for group in self._aligned_micro_batches(samples):
            data = collate(group, self.tokenizer.pad_token_id)
            logits = padded_response_logits(self.model, data, self.device)
            logprobs = token_logprobs(logits, data.response_ids.to(self.device), self.recipe.rollout.temperature)
            for sample, row in zip(group, logprobs.cpu(), strict=True):
                if not sample.masked:
                    result[id(sample)] = row[: len(sample.completion.token_ids)].tolist()
        return [result[id(sample)] for sample in samples]

    @torch.no_grad()
    def full_buckets(self, bucket_mb: int, dtype: str, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        """The full (unsharded) weights in ``dtype`` on ``device``, in the buckets ``plan_buckets`` cuts.

        Every rank takes part in gathering each bucket; only rank 0 yields buckets.
        """
        wire = getattr(torch, dtype)
        for entries in plan_buckets(self.parameter_shapes, bucket_mb, wire.itemsize):
            with self.backend.gathered([name for name, _ in entries]) as params:
                bucket = {name: full.detach().to(device, wire, copy=True) for name, full in params}
            if self.rank == 0:
                yield bucket

    def state_dict_buckets(
        self, bucket_mb: int, dtype: str, transport: str = "object_store", engine: str = "vllm"
    ) -> list[ray.ObjectRef]:
        """The full weights as object-store buckets of about ``bucket_mb`` MB; rank 0 returns their refs, the
        other ranks an empty list. With ``cuda_ipc`` a bucket stays on this GPU as one flat tensor and the object
        store carries only its CUDA IPC handle, in the engine's format (LMDeploy's ``serialize_flattened``, else
        a ``SharedBucket``); the tensor lives until ``release_buckets``.
        """
        device = self.device if transport == "cuda_ipc" else torch.device("cpu")
        return [self._put_bucket(bucket, transport, engine) for bucket in self.full_buckets(bucket_mb, dtype, device)]

    def _put_bucket(self, bucket: dict[str, torch.Tensor], transport: str, engine: str) -> ray.ObjectRef:
        if transport == "object_store":
            return ray.put(bucket)
        handle, flat = serialize_flattened(bucket) if engine == "lmdeploy" else share(bucket)
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

    def load(self, uri: str) -> None:
        """Continue from a checkpoint written by ``save``: weights, optimizer, scheduler and RNG."""
        with readable(uri) as path:
            files = sorted(path.glob("*.safetensors"))
            weights: dict[str, Any] = {name: tensor for file in files for name, tensor in load_file(file).items()}
            state = torch.load(path / "trainer_state.pt", weights_only=False)
        self.backend.load(weights, state.get("optimizer"), uri)
        self.backend.scheduler.load_state_dict(state["scheduler"])
        self.num_optimizer_steps = state["num_optimizer_steps"]
        torch.set_rng_state(state["rng"])

    def save(self, uri: str, optimizer: bool, files: dict[str, str]) -> None:
        """HF safetensors and tokenizer at ``uri``, plus optimizer and trainer state and ``files`` (name: text)."""
        weights, optim_state = self.backend.state_dicts(optimizer, uri)
        if self.rank != 0:
            return
        trainer_state: dict[str, Any] = {
            "num_optimizer_steps": self.num_optimizer_steps,
            "scheduler": self.backend.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if optim_state is not None:
            trainer_state["optimizer"] = optim_state
        with writable(uri) as target:
            self.backend.module.save_pretrained(target, state_dict=weights)
            self.tokenizer.save_pretrained(target)
            torch.save(trainer_state, target / "trainer_state.pt")
            for name, text in files.items():
                (target / name).write_text(text)


class TrainerGroup:
    """N ``TrainerWorker`` actors, one per rank, in a placement group from the recipe."""

    def __init__(self, recipe: Recipe):
        placement = recipe.placement
        require_resources("trainer_resources", placement.trainer_resources, placement.num_trainer_ranks)
        bundle = {"CPU": placement.trainer_cpus, "GPU": placement.trainer_gpus, **placement.trainer_resources}
        self.placement_group = placement_group(
            [{k: v for k, v in bundle.items() if v}] * placement.num_trainer_ranks, strategy=placement.strategy
        )
        try:
            ray.get(self.placement_group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"the trainer placement group ({placement.num_trainer_ranks} x {bundle}) could not be placed "
                f"within {PLACEMENT_TIMEOUT_S}s; the cluster has {ray.available_resources()} free"
            ) from None
        actor = ray.remote(TrainerWorker)
        self.workers: list[Any] = [
            actor.options(
                num_cpus=placement.trainer_cpus,
                num_gpus=placement.trainer_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, bundle_index),
            ).remote(recipe, bundle_index, placement.num_trainer_ranks)
            for bundle_index in range(placement.num_trainer_ranks)
        ]
        try:
            master_addr, master_port = ray.get(self.workers[0].rendezvous_address.remote())
            ray.get([w.setup.remote(master_addr, master_port) for w in self.workers])
        except BaseException:
            self.shutdown()
            raise

    def train_step(self, shards: list[TrainBatch]) -> dict[str, float]:
        return ray.get([w.train_step.remote(s) for w, s in zip(self.workers, shards, strict=True)])[0]

    def compute_logprobs(self, shards: list[list[Sample]]) -> list[list[list[float]]]:
        return ray.get([w.compute_logprobs.remote(s) for w, s in zip(self.workers, shards, strict=True)])

    def sft_step(self, shards: list[SFTBatch]) -> dict[str, float]:
        return ray.get([w.sft_step.remote(s) for w, s in zip(self.workers, shards, strict=True)])[0]

    def sft_eval(self, shards: list[list[SFTExample]]) -> dict[str, float]:
        return ray.get([w.sft_eval.remote(s) for w, s in zip(self.workers, shards, strict=True)])[0]

    def dpo_step(self, shards: list[PreferenceBatch]) -> dict[str, float]:
        return ray.get([w.dpo_step.remote(s) for w, s in zip(self.workers, shards, strict=True)])[0]

    def pair_logprobs(self, shards: list[list[PreferencePair]]) -> list[list[tuple[float, float]]]:
        return ray.get([w.pair_logprobs.remote(s) for w, s in zip(self.workers, shards, strict=True)])

    def state_dict_buckets(
        self, bucket_mb: int, dtype: str, transport: str = "object_store", engine: str = "vllm"
    ) -> list[ray.ObjectRef]:
        return ray.get([w.state_dict_buckets.remote(bucket_mb, dtype, transport, engine) for w in self.workers])[0]

    def release_buckets(self) -> None:
        ray.get([w.release_buckets.remote() for w in self.workers])

    def free_cached_memory(self) -> None:
        ray.get([w.free_cached_memory.remote() for w in self.workers])

    def gpu_memory(self) -> list[GpuMemory | None]:
        """Each rank's GPU memory between updates (``None`` before the first update or off the GPU)."""
        return ray.get([w.gpu_memory.remote() for w in self.workers])

    def weight_group_address(self) -> tuple[str, int]:
        """Host and a free port on rank 0's node, for the broadcast group's store."""
        return ray.get(self.workers[0].rendezvous_address.remote())

    def join_weight_group(self, host: str, port: int, world_size: int) -> list[ray.ObjectRef]:
        """Returns at once: the engines must join at the same time."""
        return [w.join_weight_group.remote(host, port, world_size) for w in self.workers]

    def broadcast_weights(self, bucket_mb: int, dtype: str) -> list[ray.ObjectRef]:
        """Returns at once: the engines receive while rank 0 sends."""
        return [w.broadcast_weights.remote(bucket_mb, dtype) for w in self.workers]

    def fingerprint(self) -> dict[str, float]:
        return ray.get([w.fingerprint.remote() for w in self.workers])[0]

    def nodes(self) -> list[str]:
        """The node of each rank."""
        return ray.get([w.node_id.remote() for w in self.workers])

    def save(self, uri: str, optimizer: bool, files: dict[str, str]) -> None:
        ray.get([w.save.remote(uri, optimizer, files) for w in self.workers])

    def load(self, path: str) -> None:
        ray.get([w.load.remote(path) for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self.placement_group)
