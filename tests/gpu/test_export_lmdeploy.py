"""``rlstack export`` output served by LMDeploy's PyTorch engine, checked against transformers on the GPU."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlstack import models
from rlstack.checkpoint import MANIFEST, manifest_of
from rlstack.cli import main as rlstack_main
from rlstack.data.chat import render_prompt

pytestmark = pytest.mark.gpu

MODEL = "random:smollm2-135m"
BOUND = 0.05
"""Mean |LMDeploy - transformers| logprob of the sampled tokens, both bf16 on the GPU."""


def test_an_export_loads_in_lmdeploy_with_transformers_logprobs(tmp_path):
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    checkpoint = tmp_path / "run/checkpoints/step_3"
    models.load_model(MODEL, seed=7).save_pretrained(checkpoint)
    models.load_tokenizer(MODEL).save_pretrained(checkpoint)
    torch.save({"num_optimizer_steps": 3}, checkpoint / "trainer_state.pt")
    (checkpoint / "controller_state.json").write_text(json.dumps({"step": 3}))
    (checkpoint / "recipe.yaml").write_text("name: tiny\n")
    (checkpoint / MANIFEST).write_text(json.dumps({"files": manifest_of(checkpoint)}))  # written last
    assert rlstack_main(["export", str(checkpoint), str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0

    tokenizer = models.load_tokenizer(MODEL)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"What is {i} + 2?"}]) for i in range(4)]
    config = PytorchEngineConfig(cache_max_entry_count=0.2, logprobs_mode="raw_logprobs")
    pipe = pipeline(str(tmp_path / "out"), backend_config=config, log_level="ERROR")
    try:
        sampling = GenerationConfig(max_new_tokens=16, do_sample=True, top_k=0, logprobs=1, random_seed=1)
        responses = pipe([tokenizer.decode(p) for p in prompts], gen_config=sampling, do_preprocess=False)
    finally:
        pipe.close()

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype=torch.bfloat16).cuda()
    diffs = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = list(response.token_ids)
        assert ids and len(response.logprobs) == len(ids)
        with torch.no_grad():
            logits = model(torch.tensor([list(prompt) + ids], device="cuda")).logits[0, len(prompt) - 1 : -1]
        ours = torch.log_softmax(logits.float(), -1)[torch.arange(len(ids)), ids].cpu()
        engine = torch.tensor([row[t] for t, row in zip(ids, response.logprobs, strict=True)])
        diffs.append((ours - engine).abs())
    mean_abs_diff = torch.cat(diffs).mean().item()
    print(f"export served by LMDeploy: logprob mean |diff| against transformers (bf16): {mean_abs_diff:.4f}")
    assert mean_abs_diff < BOUND
