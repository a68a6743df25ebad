"""The trainer group: FSDP2 ranks as Ray actors, one per rank, in a placement group."""

import math
import os
import socket
from pathlib import Path
from typing import Any

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
from rlstack.config import Recipe
from rlstack.data.batching import Collated, collate, micro_batches, padding_sample
from rlstack.types import Sample, TrainBatch

PLACEMENT_TIMEOUT_S = 300


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
        self.reference = self._sharded_model() if recipe.algorithm.kl_coef > 0 else None
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

    def _response_logits(self, model: torch.nn.Module, batch: Collated) -> torch.Tensor:
        """``[B, R, V]`` logits predicting each response token, scaled by the sampling temperature."""
        length = batch.response_ids.shape[1]
        out = model(
            input_ids=batch.input_ids.to(self.device),
            attention_mask=batch.attention_mask.to(self.device),
            position_ids=batch.position_ids.to(self.device),
            logits_to_keep=length + 1,
            use_cache=False,
        )
        return out.logits[:, :-1] / self.recipe.rollout.temperature

    def _aligned_micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        """Micro-batches, padded so that every rank runs the same number of FSDP collectives."""
        groups = micro_batches(samples, self.recipe.trainer.micro_batch_tokens)
        count = torch.tensor([len(groups)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return groups + [[padding_sample(samples[0])]] * (int(count) - len(groups))

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
            logits = self._response_logits(self.model, data)
            logprobs = token_logprobs(logits, data.response_ids.to(self.device))
            old = data.old_logprobs.to(self.device)
            token_loss, clipped = clipped_surrogate(
                logprobs, old, data.advantages.to(self.device), algo.clip_low, algo.clip_high
            )
            kl = torch.zeros_like(token_loss)
            if self.reference is not None:
                with torch.no_grad():
                    ref = token_logprobs(self._response_logits(self.reference, data), data.response_ids.to(self.device))
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.trainer.max_grad_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_optimizer_steps += 1
        dist.all_reduce(sums)
        loss, tokens, clipped_sum, entropy, kl_sum, mismatch = sums.tolist()
        tokens = max(tokens, 1.0)
        return {
            "loss": loss,
            "clip_fraction": clipped_sum / tokens,
            "entropy": entropy / tokens,
            "kl": kl_sum / tokens,
            "logprob_mismatch": mismatch / tokens,
            "grad_norm": float(grad_norm),
            "lr": lr,
        }

    @torch.no_grad()
    def compute_logprobs(self, samples: list[Sample]) -> list[list[float]]:
        """Policy logprobs of each sample's response tokens, at the sampling temperature."""
        self.model.eval()
        result: list[list[float]] = []
        for group in self._aligned_micro_batches(samples):
            data = collate(group, self.tokenizer.pad_token_id)
            logprobs = token_logprobs(self._response_logits(self.model, data), data.response_ids.to(self.device))
            for sample, row in zip(group, logprobs.cpu(), strict=True):
                if not sample.masked:
                    result.append(row[: len(sample.completion.token_ids)].tolist())
        return result

    @torch.no_grad()
    def state_dict_buckets(self, bucket_mb: int, dtype: str) -> list[ray.ObjectRef]:
        """The full (unsharded) weights in ``dtype``, as object-store buckets of about ``bucket_mb`` MB.

        Every rank takes part in gathering each parameter; rank 0 puts the buckets and
        returns their refs, the other ranks return an empty list.
        """
        limit = bucket_mb * 2**20
        refs: list[ray.ObjectRef] = []
        bucket: dict[str, torch.Tensor] = {}
        size = 0
        for name, param in self.model.named_parameters():
            full = param.full_tensor() if isinstance(param, DTensor) else param
            if self.rank != 0:
                continue
            tensor = full.detach().to("cpu", getattr(torch, dtype))
            bucket[name] = tensor
            size += tensor.numel() * tensor.element_size()
            if size >= limit:
                refs.append(ray.put(bucket))
                bucket, size = {}, 0
        if bucket:
            refs.append(ray.put(bucket))
        return refs

    def fingerprint(self) -> dict[str, float]:
        return models.fingerprint(self.model)

    def load(self, path: str) -> None:
        """Continue from a checkpoint written by ``save``: weights, optimizer, scheduler and RNG."""
        files = sorted(Path(path).glob("*.safetensors"))
        weights: dict[str, Any] = {name: tensor for file in files for name, tensor in load_file(file).items()}
        options = StateDictOptions(full_state_dict=True, strict=False)  # tied lm_head is saved once
        set_model_state_dict(self.model, weights, options=options)
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        if "optimizer" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        self.scheduler.load_state_dict(state["scheduler"])
        self.num_optimizer_steps = state["num_optimizer_steps"]
        torch.set_rng_state(state["rng"])

    def save(self, path: str, optimizer: bool) -> None:
        """HF safetensors and tokenizer in ``path``, plus optimizer and trainer state."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=options) if optimizer else None
        if self.rank != 0:
            return
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(target, state_dict=weights)
        self.tokenizer.save_pretrained(target)
        trainer_state: dict[str, Any] = {
            "num_optimizer_steps": self.num_optimizer_steps,
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if optim_state is not None:
            trainer_state["optimizer"] = optim_state
        torch.save(trainer_state, target / "trainer_state.pt")


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

    def state_dict_buckets(self, bucket_mb: int, dtype: str) -> list[ray.ObjectRef]:
        return ray.get([w.state_dict_buckets.remote(bucket_mb, dtype) for w in self.workers])[0]

    def fingerprint(self) -> dict[str, float]:
        return ray.get([w.fingerprint.remote() for w in self.workers])[0]

    def save(self, path: str, optimizer: bool) -> None:
        ray.get([w.save.remote(path, optimizer) for w in self.workers])

    def load(self, path: str) -> None:
        ray.get([w.load.remote(path) for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self.placement_group)
