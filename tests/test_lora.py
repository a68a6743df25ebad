"""LoRA's merged weights, its adapter-off reference, the HF engine's adapter loading, the export's merge and the
recipe's refusals."""

import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from rlstack import models
from rlstack.checkpoint import MANIFEST, manifest_of
from rlstack.config import LoraSection, RecipeError, load_recipe
from rlstack.export import export
from rlstack.forward import add_response_scoring
from rlstack.lora import ADAPTER_DIR, Adapter, AdapterDisabled, merged_weight, pairs
from rlstack.preflight import preflight
from rollout.hf_engine import HFEngine

TINY = "recipes/grpo_tiny_random.yaml"


def test_merged_weight_is_w_plus_scale_times_b_at_a():
    weight = torch.eye(2)  # [out=2, in=2]
    lora_a = torch.tensor([[1.0, 2.0]])  # [r=1, in=2]
    lora_b = torch.tensor([[1.0], [0.0]])  # [out=2, r=1]
    # B @ A = [[1, 2], [0, 0]]; W + 2 * B @ A = [[3, 4], [0, 1]]
    assert torch.equal(merged_weight(weight, lora_a, lora_b, 2.0), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))


def test_an_adapter_whose_lora_a_lacks_its_lora_b_is_refused():
    a = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="not its lora_B"):
        pairs({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a})
    with pytest.raises(ValueError, match="neither"):
        pairs({"model.embed_tokens.weight": a})


@pytest.fixture
def adapted():
    """A tiny random model with a rank-4 adapter whose B is random (a fresh one's is zero)."""
    model = models.load_model("random:tiny", seed=0)
    add_response_scoring(model, 1024)
    adapter = Adapter(model, LoraSection(rank=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)
    return model.eval(), adapter


IDS = torch.tensor([[5, 17, 300, 42, 9]])


def test_only_the_adapter_is_trainable(adapted):
    model, adapter = adapted
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == adapter.adapter_names and all(".lora_" in name for name in trainable)
    assert len(adapter.adapted) == 2 * 7  # two layers, seven linear layers each


def test_merged_weights_under_the_base_names_compute_what_the_adapted_model_computes(adapted):
    model, adapter = adapted
    names = [name for name, _ in models.load_model("random:tiny", seed=0).named_parameters()]
    params = dict(model.named_parameters())
    merged = dict(adapter.merged(names, ((n, params[n]) for n in adapter.sources(names))))
    assert list(merged) == names
    plain = models.load_model("random:tiny", seed=0)
    plain.load_state_dict(merged, strict=False)  # lm_head is tied to the embedding
    with torch.no_grad():
        assert torch.allclose(plain(IDS).logits, model(IDS).logits, atol=1e-5)


def test_the_reference_is_the_base_model_and_shares_the_policys_weights(adapted):
    model, adapter = adapted
    base = models.load_model("random:tiny", seed=0).eval()
    add_response_scoring(base, 1024)
    reference = AdapterDisabled(adapter)
    assert list(reference.parameters()) == []  # no copy of the weights
    with torch.no_grad():
        assert torch.allclose(reference(input_ids=IDS).logits, base(input_ids=IDS).logits, atol=1e-6)
        assert not torch.allclose(model(input_ids=IDS).logits, base(input_ids=IDS).logits, atol=1e-3)
        args = (IDS, torch.arange(5)[None], None, torch.arange(4), IDS[0, 1:], 1.0)
        ours, _ = reference.score_responses(*args)
        theirs, _ = base.score_responses(*args)
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_hf_engine_applies_each_adapter_to_the_base_weights_so_none_accumulates(adapted):
    model, adapter = adapted
    first = adapter.adapter_state(model.named_parameters())
    second = {name: 2 * t.detach() for name, t in first.items()}
    engine = HFEngine("random:tiny", dtype=torch.float32, device="cpu", seed=0)
    fresh = HFEngine("random:tiny", dtype=torch.float32, device="cpu", seed=0)
    engine.load_adapter(1, first, 2.0)
    engine.load_adapter(2, second, 2.0)
    fresh.load_adapter(7, second, 2.0)
    assert engine.policy_version == 2
    assert models.fingerprint(engine.model) == models.fingerprint(fresh.model)
    engine.load_adapter(3, first, 2.0)
    with torch.no_grad():
        assert torch.allclose(engine.model(IDS).logits, model(IDS).logits, atol=1e-5)
    fewer = dict(list(first.items())[:2])
    with pytest.raises(RuntimeError, match="does not fit"):
        engine.load_adapter(4, fewer, 2.0)
    assert engine.policy_version == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora={rank: 4}", "trainer.backend=deepspeed"], "model.lora.*trainer.backend=fsdp2 only"),
        (["rollout.lora_sync=adapter"], "rollout.lora_sync=adapter sends a LoRA adapter: set model.lora"),
        (
            ["model.lora={rank: 4}", "rollout.lora_sync=adapter", "rollout.engine=lmdeploy", "placement.device=cuda"],
            "only when it starts",
        ),
        (["model.lora={rank: 4}", "rollout.lora_sync=adapter", "rollout.weight_transport=broadcast"], "object store"),
        (["model.lora={rank: 0}"], "model.lora.rank"),
        (["model.lora={target_modules: []}"], "target_modules is empty"),
    ],
)
def test_recipes_that_lora_cannot_run_are_refused_before_any_actor_starts(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, overrides)


@pytest.fixture
def lora_checkpoint(adapted, tmp_path):
    """A LoRA checkpoint as a trainer writes it: the base weights, ``adapter/``, the rest, the manifest last."""
    model, adapter = adapted
    path = tmp_path / "run/checkpoints/step_2"
    adapter.save(path / ADAPTER_DIR, adapter.adapter_state(model.named_parameters()))
    model.save_pretrained(path, state_dict=adapter.base_state(model.state_dict()))
    models.load_tokenizer("random:tiny").save_pretrained(path)
    torch.save({"num_optimizer_steps": 2}, path / "trainer_state.pt")
    (path / "controller_state.json").write_text(json.dumps({"step": 2}))
    (path / "recipe.yaml").write_text("name: tiny\n")
    (path / MANIFEST).write_text(json.dumps({"files": manifest_of(path)}))
    return path


def test_export_merge_writes_a_plain_model_that_computes_what_the_adapted_one_does(adapted, lora_checkpoint, tmp_path):
    model, _ = adapted
    files = export(lora_checkpoint, tmp_path / "merged", merge=True)
    assert "model.safetensors" in files and ADAPTER_DIR not in files
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not [name for name, _ in merged.named_parameters() if "lora" in name or "base_layer" in name]
    with torch.no_grad():
        assert torch.allclose(merged(IDS).logits, model(IDS).logits, atol=1e-5)

    export(lora_checkpoint, tmp_path / "unmerged")  # the base weights, and the adapter beside them for PEFT
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "unmerged")
    served = PeftModel.from_pretrained(base, tmp_path / "unmerged" / ADAPTER_DIR).eval()
    with torch.no_grad():
        assert torch.allclose(served(IDS).logits, model(IDS).logits, atol=1e-5)


def test_export_merge_of_a_checkpoint_without_an_adapter_is_refused(lora_checkpoint, tmp_path):
    shutil.rmtree(lora_checkpoint / ADAPTER_DIR)
    (lora_checkpoint / MANIFEST).write_text(json.dumps({"files": manifest_of(lora_checkpoint)}))
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        export(lora_checkpoint, tmp_path / "out", merge=True)


def test_target_modules_that_name_no_layer_of_the_model_are_refused_before_any_actor_starts(tmp_path):
    recipe = load_recipe(TINY, ["model.lora={target_modules: [qkv_proj]}", f"tracking.run_root={tmp_path}"])
    with pytest.raises(ValueError, match=r"model.lora.target_modules=\['qkv_proj'\] names no layer.*'q_proj'"):
        preflight(recipe, tmp_path / "run")
    preflight(recipe.model_copy(update={"model": load_recipe(TINY, ["model.lora={}"]).model}), tmp_path / "run")


def test_a_lora_checkpoint_as_model_path_is_refused_for_its_merged_export(lora_checkpoint, tmp_path):
    recipe = load_recipe(TINY, [f"model.path={lora_checkpoint}", f"tracking.run_root={tmp_path}"])
    with pytest.raises(RecipeError, match="is a LoRA checkpoint.*--merge"):
        preflight(recipe, tmp_path / "run")
