import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlstack import models
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
