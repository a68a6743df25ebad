"""DeepSpeed ZeRO (stages 1, 2 and 3, optional CPU offload) as a trainer backend.

The DeepSpeed config is generated from the recipe (``deepspeed_config``); the ranks are
Ray actors that join the group's own rendezvous through ``deepspeed.init_distributed``,
not the ``deepspeed`` launcher. rlstack owns gradient accumulation: micro-batches are cut
by tokens, so their number varies from step to step, and DeepSpeed runs with
``managed_gradient_accumulation: false``, where ``backward`` accumulates and ``step``
reduces, clips and updates once.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

from actors.optim import adamw, lr_scheduler
from rlstack import models
from rlstack.checkpoint import readable, writable
from rlstack.config import Recipe
from rlstack.forward import add_response_scoring

TAG = "zero"
"""The DeepSpeed checkpoint tag under ``<checkpoint>/deepspeed/``."""


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """The DeepSpeed config for ``recipe``, with ``trainer.deepspeed.config`` merged over it key by key.

    Batch sizes are nominal (one sample per micro-step): rlstack sizes micro-batches by
    tokens and calls ``step`` once per optimizer step.
    """
    trainer = recipe.trainer
    section = trainer.deepspeed
    zero: dict[str, Any] = {"stage": section.zero_stage}
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": recipe.placement.device == "cuda"}
    if section.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": recipe.placement.device == "cuda"}
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": trainer.max_grad_norm,
        "bf16": {"enabled": trainer.compute_dtype == "bfloat16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # rlstack's own AdamW and LR schedule, as with FSDP2
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }
    return merged(config, section.config)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested dictionaries merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeedBackend:
    """A ``deepspeed.initialize`` engine around the policy; ZeRO keeps float32 master weights in the optimizer."""

    def __init__(self, recipe: Recipe, rank: int, world_size: int, init_method: str, reference: bool):
        os.environ.setdefault("DS_ACCELERATOR", recipe.placement.device)
        os.environ.update(LOCAL_RANK="0", RANK=str(rank), WORLD_SIZE=str(world_size))  # one device per actor
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.init_distributed(
            dist_backend="nccl" if recipe.placement.device == "cuda" else "gloo",
            auto_mpi_discovery=False,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
        )
        self.recipe = recipe
        self.world_size = world_size
        self.stage = recipe.trainer.deepspeed.zero_stage
        config = deepspeed_config(recipe)
        model = self._model()
        if recipe.trainer.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=adamw(model.parameters(), recipe.trainer),
            lr_scheduler=lambda optimizer: lr_scheduler(optimizer, recipe),
            config=config,
        )
        self.model: torch.nn.Module = self.engine
        self.module = self.engine.module
        self.scheduler = self.engine.lr_scheduler
        self.reference = self._reference(config) if reference else None

    def _model(self) -> PreTrainedModel:
        """The float32 model with the recipe's attention, and ``score_responses`` (the engine passes attributes it
        lacks through to its module)."""
        model = models.load_trainer_model(self.recipe)
        add_response_scoring(model, self.recipe.trainer.logits_chunk_tokens)
        return model

    def _reference(self, config: dict[str, Any]) -> torch.nn.Module:
        """A frozen copy of the initial policy: partitioned too under ZeRO-3, else whole in the compute dtype."""
        import deepspeed

        model = self._model().requires_grad_(False)
        if self.stage == 3:
            inference = {
                k: v for k, v in config.items() if k not in ("gradient_clipping", "zero_allow_untested_optimizer")
            }
            return deepspeed.initialize(model=model, config=inference)[0]
        return model.to(self.engine.device, getattr(torch, self.recipe.trainer.compute_dtype))

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients; like FSDP2, DeepSpeed averages over ranks, so the loss is scaled by the world size."""
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> dict[str, float]:
        """Reduce, clip, step AdamW and the LR schedule; returns ``grad_norm`` and the ``lr`` used."""
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()
        self.engine.zero_grad()
        grad_norm = self.engine.get_global_grad_norm()
        return {"grad_norm": float(grad_norm), "lr": float(lr)}

    @contextmanager
    def gathered(self, names: list[str]) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
        """The named parameters in full, in the compute dtype. ZeRO-3 gathers them together (a collective, so
        every rank must call it with the same names) and partitions them again on exit."""
        import deepspeed

        params = dict(self.module.named_parameters())
        chosen = [params[name] for name in names]
        if self.stage < 3:
            yield iter(zip(names, chosen, strict=True))
            return
        with deepspeed.zero.GatheredParameters(chosen, modifier_rank=None):
            yield iter(zip(names, chosen, strict=True))

    def state_dicts(self, optimizer: bool, uri: str) -> tuple[dict[str, Any], Any]:
        """Full float32 master weights on the CPU (complete on rank 0), gathered one at a time. With ``optimizer``,
        every rank also writes its ZeRO partition under ``<uri>/deepspeed`` (DeepSpeed's own format, which
        resumes only with the same world size); the state returned then names that checkpoint."""
        from deepspeed.utils import safe_get_full_fp32_param

        weights = {}
        for name, param in self.module.named_parameters():
            full = safe_get_full_fp32_param(param)
            weights[name] = full.detach().float().cpu() if full is not None else param.detach().float().cpu()
        if not optimizer:
            return weights, None
        with writable(f"{uri}/deepspeed") as target:
            self.engine.save_checkpoint(str(target), tag=TAG)
        return weights, {"deepspeed_tag": TAG}

    def load(self, weights: dict[str, Any], optimizer: Any, uri: str) -> None:
        """Resume from ``<uri>/deepspeed`` when the checkpoint has it; else set the weights alone, masters and
        compute copies both, with a fresh optimizer. ``ValueError`` naming the parameters the checkpoint's
        weights lack (a tied ``lm_head`` is one parameter with the embedding, saved once)."""
        missing = [name for name, _ in self.module.named_parameters() if name not in weights]
        if missing:
            raise ValueError(f"checkpoint {uri!r} does not fit the model: missing {missing}")
        if optimizer is not None:
            with readable(f"{uri}/deepspeed") as path:
                self.engine.load_checkpoint(str(path), tag=optimizer["deepspeed_tag"], load_lr_scheduler_states=False)
            return
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        for name, param in self.module.named_parameters():
            value = weights[name].to(self.engine.device)
            safe_set_full_fp32_param(param, value)
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=self.stage == 3):
                param.data.copy_(value)
