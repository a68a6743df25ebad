"""LoRA (https://arxiv.org/abs/2106.09685) through PEFT: the adapter in the trainer, and the weights it implies.

An adapted linear layer computes ``y = W x + s * B (A x)`` with ``W: [out, in]`` frozen,
``A: [r, in]``, ``B: [out, r]`` trained and ``s = alpha / r``. PEFT injects the adapter in
place, so the model's parameters are renamed: ``q_proj.weight`` becomes
``q_proj.base_layer.weight`` beside ``q_proj.lora_A.default.weight`` and
``q_proj.lora_B.default.weight``. ``Adapter`` maps between those names and the base
model's, so the engines (merged sync), the checkpoint and the export see plain HF names:

- ``merged(...)``: ``W + s * B @ A`` under ``q_proj.weight``, in float32;
- ``adapter_state(...)``: the adapter alone, in PEFT's file format (``lora_A.weight``,
  ``base_model.model.`` prefix), which ``apply`` merges into kept base weights.
"""

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

from rlstack.config import LoraSection
from rlstack.forward import SCORE_METHOD

ADAPTER_DIR = "adapter"
"""A LoRA checkpoint's adapter, in PEFT's format (``adapter_config.json``, ``adapter_model.safetensors``)."""
ADAPTER_FILE = "adapter_model.safetensors"
NAME = "default"
"""PEFT's name of the one adapter."""
FILE_PREFIX = "base_model.model."
"""What PEFT puts before a parameter's name in an adapter file."""


def scale(section: LoraSection) -> float:
    """``s = alpha / r``, PEFT's ``scaling`` without rsLoRA."""
    return section.alpha / section.rank


@torch.no_grad()
def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, s: float) -> torch.Tensor:
    """``W + s * B @ A`` in float32; ``weight: [out, in]``, ``lora_a: [r, in]``, ``lora_b: [out, r]``."""
    return weight.float() + s * (lora_b.float() @ lora_a.float())


def pairs(adapter: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{base weight name: (A, B)}`` from an adapter in PEFT's file format; ``ValueError`` for an ``A`` without
    its ``B`` or a name that is neither."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, a in adapter.items():
        if not name.endswith(".lora_A.weight"):
            if not name.endswith(".lora_B.weight"):
                raise ValueError(f"adapter tensor {name!r} is neither a lora_A nor a lora_B weight")
            continue
        module = name.removesuffix(".lora_A.weight")
        b = adapter.get(f"{module}.lora_B.weight")
        if b is None:
            raise ValueError(f"adapter has {name!r} but not its lora_B")
        found[f"{module.removeprefix(FILE_PREFIX)}.weight"] = (a, b)
    if len(found) * 2 != len(adapter):
        raise ValueError(f"adapter has {len(adapter)} tensors, not a lora_A and a lora_B for each of {len(found)}")
    return found


def layer_name(parameter: str) -> str:
    """The layer a weight belongs to, as ``target_modules`` names it: ``q_proj`` for
    ``model.layers.0.self_attn.q_proj.weight``."""
    return parameter.rsplit(".", 2)[-2]


def write_adapter(directory: Path, adapter: dict[str, torch.Tensor], scale: float) -> None:
    """``adapter`` (PEFT's file format) as a PEFT adapter directory an engine loads by path:
    ``adapter_model.safetensors`` and an ``adapter_config.json`` whose rank comes from the ``A: [r, in]`` shapes and
    whose ``lora_alpha`` is ``scale * r``."""
    found = pairs(adapter)
    ranks = {a.shape[0] for a, _ in found.values()}
    if len(ranks) != 1:
        raise ValueError(f"adapter mixes ranks {sorted(ranks)}; one rank is expected")
    rank = ranks.pop()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted({layer_name(name) for name in found}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in adapter.items()}, directory / ADAPTER_FILE)
    (directory / "adapter_config.json").write_text(json.dumps(config))


def check_targets(section: LoraSection, parameter_names: Iterable[str]) -> None:
    """``ValueError`` naming ``model.lora.target_modules`` when none of the model's weights is in a layer it names
    (``parameter_names``: the base model's, e.g. ``model.layers.0.self_attn.q_proj.weight``)."""
    layers = {layer_name(name) for name in parameter_names if name.count(".") >= 2}
    if not layers & set(section.target_modules):
        raise ValueError(
            f"model.lora.target_modules={list(section.target_modules)} names no layer of the model; its layers with "
            f"weights are {sorted(layers)}"
        )


class Adapter:
    """The LoRA adapter PEFT injected into a model, and the name maps between that model and the base model."""

    def __init__(self, model: torch.nn.Module, section: LoraSection):
        """Inject the adapter into ``model`` in place (before it is sharded); only the adapter stays trainable."""
        config = LoraConfig(
            r=section.rank,
            lora_alpha=section.alpha,  # type: ignore[arg-type]  # typed int; PEFT divides it by r as a float
            lora_dropout=section.dropout,
            target_modules=list(section.target_modules),
            bias="none",
        )
        self.peft: PeftModel = get_peft_model(model, config)  # type: ignore[arg-type]
        self.model = model  # the same object, now holding LoRA layers; what FSDP2 shards
        self.scale = scale(section)
        names = [name for name, _ in model.named_parameters()]
        self.adapted = {
            name.replace(".base_layer.weight", ".weight") for name in names if name.endswith(".base_layer.weight")
        }  # base names of adapted weights
        self.adapter_names = [name for name in names if ".lora_" in name]
        if not self.adapted:
            raise ValueError(f"model.lora.target_modules={list(section.target_modules)} matches no layer of the model")

    def model_name(self, name: str) -> str:
        """The model's name of the base model's parameter ``name``: ``.base_layer.`` inserted in an adapted layer."""
        module, _, leaf = name.rpartition(".")
        return f"{module}.base_layer.{leaf}" if f"{module}.weight" in self.adapted else name

    def sources(self, names: Iterable[str], merge: bool = True) -> list[str]:
        """The model's parameters that ``names`` (the base model's) are computed from: with ``merge=False`` the
        base weights alone."""
        found = []
        for name in names:
            found.append(self.model_name(name))
            if merge and name in self.adapted:
                module = name.removesuffix(".weight")
                found += [f"{module}.lora_A.{NAME}.weight", f"{module}.lora_B.{NAME}.weight"]
        return found

    def merged(
        self, names: Iterable[str], params: Iterable[tuple[str, torch.Tensor]], merge: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(base name, weight)`` for each of ``names``, an adapted one merged (``W + s * B @ A``, float32; with
        ``merge=False`` its base ``W``) from ``params``, the full tensors of ``sources(names, merge)``."""
        full = dict(params)
        for name in names:
            weight = full[self.model_name(name)]
            if merge and name in self.adapted:
                module = name.removesuffix(".weight")
                a, b = full[f"{module}.lora_A.{NAME}.weight"], full[f"{module}.lora_B.{NAME}.weight"]
                weight = merged_weight(weight, a, b, self.scale)
            yield name, weight

    def base_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The base model's weights under its own names, from the model's full state dict (no adapter)."""
        return {name.replace(".base_layer.", "."): value for name, value in state.items() if ".lora_" not in name}

    @staticmethod
    def file_name(name: str) -> str:
        """A model parameter's name in PEFT's adapter file: ``base_model.model.`` prefix, no adapter name."""
        return FILE_PREFIX + name.replace(f".{NAME}.", ".")

    def adapter_state(self, params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The adapter's tensors among ``params`` (``(model name, tensor)``), under PEFT's file names."""
        return {self.file_name(name): value for name, value in params if ".lora_" in name}

    def model_state(
        self, base: dict[str, Any], adapter: dict[str, torch.Tensor], keys: Iterable[str]
    ) -> dict[str, Any]:
        """The model's state dict (``keys``) from a checkpoint's base weights and adapter file; a key that is in
        neither is left out, for the backend's strict load to name."""
        state: dict[str, Any] = {}
        for key in keys:
            source = adapter.get(self.file_name(key)) if ".lora_" in key else base.get(key.replace(".base_layer.", "."))
            if source is not None:
                state[key] = source
        return state

    def save(self, directory: Path, adapter: dict[str, torch.Tensor]) -> None:
        """``adapter`` (PEFT file names) and the adapter's config in PEFT's format, which ``PeftModel.from_pretrained``
        loads."""
        self.peft.save_pretrained(str(directory), state_dict=adapter, save_embedding_layers=False)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model: every adapted layer computes ``W x`` alone."""
        with self.peft.disable_adapter():
            yield


class AdapterDisabled(torch.nn.Module):
    """The policy with its adapter switched off, as the frozen reference of KL and online DPO: the initial policy,
    computed from the policy's own (sharded) weights, so no second copy exists. Calls go to the policy's
    ``forward`` and its other forward methods (``score_responses``) inside ``Adapter.disabled``."""

    def __init__(self, adapter: Adapter):
        super().__init__()
        self._adapter = [adapter]  # a list, so the policy is not registered as a submodule of its reference

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter = self._adapter[0]
        with adapter.disabled():
            return adapter.model(*args, **kwargs)

    def score_responses(self, *args: Any, **kwargs: Any) -> Any:
        """The policy's ``SCORE_METHOD``, without the adapter."""
        adapter = self._adapter[0]
        with adapter.disabled():
            return getattr(adapter.model, SCORE_METHOD)(*args, **kwargs)
