"""FSDP2, the trainer group's default backend: float32 master weights sharded per decoder layer."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from actors.optim import adamw, lr_scheduler
from rlstack import models
from rlstack.config import Recipe
from rlstack.forward import SCORE_METHOD, add_response_scoring
from rlstack.lora import Adapter, AdapterDisabled


class FSDP2Backend:
    """Each rank holds a shard of the float32 master weights; forward and backward run in
    ``trainer.compute_dtype`` and gradients are reduced in float32.

    FSDP2 averages gradients over ranks, so ``backward`` scales each loss by the world size:
    a micro-batch's loss is already its share of the whole batch's loss.
    """

    def __init__(self, recipe: Recipe, rank: int, world_size: int, init_method: str, reference: bool):
        self.recipe = recipe
        self.world_size = world_size
        self.device = torch.device(recipe.placement.device)
        dist.init_process_group(
            backend="nccl" if self.device.type == "cuda" else "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world_size,
        )
        self.adapter: Adapter | None = None  # set by _sharded_model with model.lora
        self.module = self._sharded_model()
        self.model: torch.nn.Module = self.module
        self.reference: torch.nn.Module | None = None
        if reference and self.adapter:  # the policy itself, its adapter switched off: no second copy
            self.reference = AdapterDisabled(self.adapter)
        elif reference:
            self.reference = self._sharded_model(trained=False).requires_grad_(False)
        self.optimizer = adamw((p for p in self.module.parameters() if p.requires_grad), recipe.trainer)
        self.scheduler = lr_scheduler(self.optimizer, recipe)

    def _sharded_model(self, trained: bool = True) -> PreTrainedModel:
        """The model sharded per decoder layer, with ``score_responses``; the policy (``trained``) also gets the
        recipe's activation checkpointing and per-layer ``torch.compile``, and ``model.lora``'s adapter, injected
        before sharding (``self.adapter``)."""
        trainer = self.recipe.trainer
        model = models.load_trainer_model(self.recipe)
        model.to(self.device)  # type: ignore[arg-type]  # transformers' decorator confuses mypy
        if trained and self.recipe.model.lora is not None:
            self.adapter = Adapter(model, self.recipe.model.lora)
        if trained and trainer.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, trainer.compute_dtype), reduce_dtype=torch.float32)
        # one rank holds every weight anyway: keep each layer's gathered bf16 copy from forward to backward
        reshard = self.world_size > 1
        for layer in model.model.layers:
            if trained and trainer.compile:
                layer.compile()
            fully_shard(layer, mp_policy=policy, reshard_after_forward=reshard)
        fully_shard(model, mp_policy=policy)
        add_response_scoring(model, trainer.logits_chunk_tokens)
        register_fsdp_forward_method(model, SCORE_METHOD)
        return model

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.world_size).backward()

    def step(self) -> dict[str, float]:
        """Clip the gradients, step AdamW and the LR schedule; returns ``grad_norm`` and the ``lr`` used."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.recipe.trainer.max_grad_norm)
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm), "lr": float(lr)}

    @contextmanager
    def gathered(self, names: list[str]) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
        """The named parameters in full, gathered one at a time as they are read; every rank must read them all."""
        params = dict(self.module.named_parameters())
        yield ((name, full_tensor(params[name])) for name in names)

    def state_dicts(self, optimizer: bool, uri: str) -> tuple[dict[str, Any], Any]:
        """Full float32 weights and the full optimizer state on the CPU (complete on rank 0); a collective."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.module, options=options)
        optim = get_optimizer_state_dict(self.module, self.optimizer, options=options) if optimizer else None
        return weights, optim

    def load(self, weights: dict[str, Any], optimizer: Any, uri: str) -> None:
        """Set every weight from the checkpoint at ``uri``, strictly: ``ValueError`` naming the weights it lacks
        or holds besides the model's. A tied weight (``lm_head`` sharing the embedding) is saved once, under the
        name it is tied to, and set from that."""
        tied = getattr(self.module, "_tied_weights_keys", None) if self.module.config.tie_word_embeddings else None
        weights = {**{name: weights[source] for name, source in (tied or {}).items() if source in weights}, **weights}
        expected = set(self.module.state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint {uri!r} does not fit the model: missing {missing}, unexpected {unexpected}")
        options = StateDictOptions(full_state_dict=True, strict=True)
        set_model_state_dict(self.module, weights, options=options)
        if optimizer is not None:
            set_optimizer_state_dict(self.module, self.optimizer, optimizer, options=options)


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    return param.full_tensor() if isinstance(param, DTensor) else param
