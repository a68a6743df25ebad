"""The trainer group: FSDP2 ranks as Ray actors, one per rank, in a placement group."""

import math
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
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from rlstack import models
from rlstack.algorithms import aggregate, clipped_surrogate, kl_penalty, token_entropy, token_logprobs
from rlstack.algorithms.dpo import comparable_logprobs, dpo_loss
from rlstack.algorithms.sft import sft_loss
from rlstack.checkpoint import readable, writable
from rlstack.config import Recipe
from rlstack.data.batching import (
    Collated,
    collate,
    micro_batches,
    padding_sample,
    pair_lengths,
    response_sample,
)
from rlstack.data.packing import PackedRow, SFTExample, attention_mask_from_positions, collate_packed, pack
from rlstack.types import PreferenceBatch, PreferencePair, Sample, SFTBatch, TrainBatch
from rollout.weight_broadcast import WeightGroup, flatten, plan_buckets

PLACEMENT_TIMEOUT_S = 300
T = TypeVar("T")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """LR factor at optimizer ``step``: linear warm-up, then constant, cosine or linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 1.0


class TrainerWorker:
    """One FSDP2 rank: the policy (and optional frozen reference), AdamW and the LR schedule."""

    def __init__(self, recipe: Recipe, rank: int, world_size: int):
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(recipe.placement.device)
        self.sent_buckets: list[dict[str, torch.Tensor]] = []  # GPU tensors behind the last cuda_ipc sync
        torch.set_num_threads(recipe.placement.num_threads or os.cpu_count() or 1)

    def rendezvous_address(self) -> tuple[str, int]:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, master_addr: str, master_port: int) -> None:
        recipe = self.recipe
        if self.device.type == "cuda":
            torch.cuda.set_device(0)  # Ray exposes exactly this actor's GPU
        dist.init_process_group(
            backend="nccl" if self.device.type == "cuda" else "gloo",
            init_method=f"tcp://{master_addr}:{master_port}",
            rank=self.rank,
            world_size=self.world_size,
        )
        self.tokenizer = models.load_tokenizer(recipe.model.path)
        self.model = self._sharded_model()
        algo = recipe.algorithm
        needs_reference = algo.kl_coef > 0 if algo.name == "grpo" else algo.name == "dpo" and algo.reference == "online"
        self.reference = self._sharded_model() if needs_reference else None
        if self.reference is not None:
            self.reference.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=recipe.trainer.lr,
            betas=recipe.trainer.betas,
            weight_decay=recipe.trainer.weight_decay,
        )
        total = recipe.trainer.num_steps * recipe.algorithm.num_minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(step, recipe.trainer.warmup_steps, total, recipe.trainer.lr_schedule),
        )
        self.num_optimizer_steps = 0

    def _sharded_model(self) -> PreTrainedModel:
        """The policy in float32 master weights, sharded per decoder layer, then at the root."""
        model = models.load_model(self.recipe.model.path, dtype=torch.float32, seed=self.recipe.model.seed)
        model.to(self.device)  # type: ignore[arg-type]  # transformers' decorator confuses mypy
        policy = MixedPrecisionPolicy(
            param_dtype=getattr(torch, self.recipe.trainer.compute_dtype), reduce_dtype=torch.float32
        )
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model

    def _response_logits(self, model: torch.nn.Module, batch: Collated, temperature: float) -> torch.Tensor:
        """``[B, R, V]`` logits predicting each response token, divided by ``temperature``."""
        length = batch.response_ids.shape[1]
        out = model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            position_ids=batch.position_ids.to(self.device),
            logits_to_keep=length + 1,
            use_cache=False,
        )
        return out.logits[:, :-1] / temperature

    def _aligned(self, groups: list[T], padding: T) -> list[T]:
        """``groups`` plus ``padding`` up to the largest count of any rank, so all run the same FSDP collectives."""
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [padding] * (int(count) - len(groups))

    def _aligned_micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        groups = micro_batches(samples, self.recipe.trainer.micro_batch_tokens)
        return self._aligned(groups, [padding_sample(samples[0])])

    def _optimizer_step(self) -> dict[str, float]:
        """Clip the gradients, step AdamW and the LR schedule; returns ``grad_norm`` and the ``lr`` used."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.trainer.max_grad_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_optimizer_steps += 1
        return {"grad_norm": float(grad_norm), "lr": float(lr)}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step of the PPO-clip surrogate over this rank's samples.

        Each micro-batch's loss is its share of the whole batch's loss (normalisers come
        from the batch), times ``world_size`` because FSDP2 averages gradients over ranks.
        """
        algo = self.recipe.algorithm
        self.model.train()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # loss, tokens, clipped, entropy, kl, |dlogp|
        pad_id = self.tokenizer.pad_token_id
        for group in self._aligned_micro_batches(list(batch.samples)):
            data = collate(group, pad_id)
            mask = data.response_mask.to(self.device)
            logits = self._response_logits(self.model, data, self.recipe.rollout.temperature)
            logprobs = token_logprobs(logits, data.response_ids.to(self.device))
            old = data.old_logprobs.to(self.device)
            token_loss, clipped = clipped_surrogate(
                logprobs, old, data.advantages.to(self.device), algo.clip_low, algo.clip_high
            )
            kl = torch.zeros_like(token_loss)
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = self._response_logits(self.reference, data, self.recipe.rollout.temperature)
                    ref = token_logprobs(ref_logits, data.response_ids.to(self.device))
                kl = kl_penalty(logprobs, ref, algo.kl_estimator)
                token_loss = token_loss + algo.kl_coef * kl
            loss = aggregate(token_loss, mask, algo.loss_agg, batch.num_tokens, batch.num_seqs, batch.max_tokens)
            (loss * self.world_size).backward()
            sums += torch.stack(
                [
                    loss.detach().double(),
                    mask.sum().double(),
                    (clipped * mask).sum().double(),
                    (token_entropy(logits) * mask).sum().double(),
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
                [examples[i] for i in indices] for indices in pack(examples, self.recipe.trainer.micro_batch_tokens)
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
            (loss * self.world_size).backward()
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
        logprobs = token_logprobs(self._response_logits(model, data, 1.0), data.response_ids.to(self.device))
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
            (loss * self.world_size * weight).backward()
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
        """Policy logprobs of each sample's response tokens, at the sampling temperature."""
        self.model.eval()
        result: list[list[float]] = []
        for group in self._aligned_micro_batches(samples):
            data = collate(group, self.tokenizer.pad_token_id)
            logits = self._response_logits(self.model, data, self.recipe.rollout.temperature)
            logprobs = token_logprobs(logits, data.response_ids.to(self.device))
            for sample, row in zip(group, logprobs.cpu(), strict=True):
                if not sample.masked:
                    result.append(row[: len(sample.completion.token_ids)].tolist())
        return result

    @torch.no_grad()
    def full_buckets(self, bucket_mb: int, dtype: str, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        """The full (unsharded) weights in ``dtype`` on ``device``, in the buckets ``plan_buckets`` cuts.

        Every rank takes part in gathering each parameter; only rank 0 yields buckets.
        """
        params = dict(self.model.named_parameters())
        wire = getattr(torch, dtype)
        for entries in plan_buckets([(n, tuple(p.shape)) for n, p in params.items()], bucket_mb, wire.itemsize):
            bucket = {}
            for name, _ in entries:
                param = params[name]
                full = param.full_tensor() if isinstance(param, DTensor) else param
                if self.rank == 0:
                    bucket[name] = full.detach().to(device, wire, copy=True)
            if self.rank == 0:
                yield bucket

    def state_dict_buckets(self, bucket_mb: int, dtype: str, transport: str = "object_store") -> list[ray.ObjectRef]:
        """The full weights as object-store buckets of about ``bucket_mb`` MB; rank 0 returns their refs, the
        other ranks an empty list. With ``cuda_ipc`` a bucket stays on this GPU and the object store carries only
        its CUDA IPC handles (``lmdeploy.utils.serialize_state_dict``); the tensors live until ``release_buckets``.
        """
        device = self.device if transport == "cuda_ipc" else torch.device("cpu")
        return [self._put_bucket(bucket, transport) for bucket in self.full_buckets(bucket_mb, dtype, device)]

    def _put_bucket(self, bucket: dict[str, torch.Tensor], transport: str) -> ray.ObjectRef:
        if transport == "object_store":
            return ray.put(bucket)
        from lmdeploy.utils import serialize_state_dict

        self.sent_buckets.append(bucket)
        return ray.put(serialize_state_dict(bucket))

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

    def fingerprint(self) -> dict[str, float]:
        return models.fingerprint(self.model)

    def load(self, uri: str) -> None:
        """Continue from a checkpoint written by ``save``: weights, optimizer, scheduler and RNG."""
        with readable(uri) as path:
            files = sorted(path.glob("*.safetensors"))
            weights: dict[str, Any] = {name: tensor for file in files for name, tensor in load_file(file).items()}
            state = torch.load(path / "trainer_state.pt", weights_only=False)
        options = StateDictOptions(full_state_dict=True, strict=False)  # tied lm_head is saved once
        set_model_state_dict(self.model, weights, options=options)
        if "optimizer" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        self.scheduler.load_state_dict(state["scheduler"])
        self.num_optimizer_steps = state["num_optimizer_steps"]
        torch.set_rng_state(state["rng"])

    def save(self, uri: str, optimizer: bool, files: dict[str, str]) -> None:
        """HF safetensors and tokenizer at ``uri``, plus optimizer and trainer state and ``files`` (name: text)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=options) if optimizer else None
        if self.rank != 0:
            return
        trainer_state: dict[str, Any] = {
            "num_optimizer_steps": self.num_optimizer_steps,
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if optim_state is not None:
            trainer_state["optimizer"] = optim_state
        with writable(uri) as target:
            self.model.save_pretrained(target, state_dict=weights)
            self.tokenizer.save_pretrained(target)
            torch.save(trainer_state, target / "trainer_state.pt")
            for name, text in files.items():
                (target / name).write_text(text)


class TrainerGroup:
    """N ``TrainerWorker`` actors, one per rank, in a placement group from the recipe."""

    def __init__(self, recipe: Recipe):
        placement = recipe.placement
        bundle = {"CPU": placement.trainer_cpus, "GPU": placement.trainer_gpus}
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
        master_addr, master_port = ray.get(self.workers[0].rendezvous_address.remote())
        ray.get([w.setup.remote(master_addr, master_port) for w in self.workers])

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

    def state_dict_buckets(self, bucket_mb: int, dtype: str, transport: str = "object_store") -> list[ray.ObjectRef]:
        return ray.get([w.state_dict_buckets.remote(bucket_mb, dtype, transport) for w in self.workers])[0]

    def release_buckets(self) -> None:
        ray.get([w.release_buckets.remote() for w in self.workers])

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

    def save(self, uri: str, optimizer: bool, files: dict[str, str]) -> None:
        ray.get([w.save.remote(uri, optimizer, files) for w in self.workers])

    def load(self, path: str) -> None:
        ray.get([w.load.remote(path) for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self.placement_group)
