"""``rlstack export CHECKPOINT OUT [--dtype D] [--merge]``: a checkpoint as a plain Hugging Face model directory.

A checkpoint already holds HF safetensors and the tokenizer, next to rlstack's own
state (optimizer, controller, recipe). The export keeps only what inference engines
read, optionally casts the weights, and checks that transformers loads the result.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlstack.checkpoint import check_resumable
from rlstack.lora import ADAPTER_DIR, ADAPTER_FILE, merged_weight, pairs

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")  # fmt: skip


def export(checkpoint: Path, out: Path, dtype: str | None = None, merge: bool = False) -> list[str]:
    """Copy the model files of ``checkpoint`` to ``out`` (casting floating weights to ``dtype``); returns their
    names. A LoRA checkpoint's ``adapter/`` is copied beside the base weights, or with ``merge`` merged into them
    (``W + alpha / r * B @ A``, in float32). ``ValueError`` if ``checkpoint`` is not a checkpoint (or, with
    ``merge``, holds no adapter) or ``out`` is not empty."""
    check_resumable(str(checkpoint))
    adapter_dir = checkpoint / ADAPTER_DIR
    if merge and not adapter_dir.is_dir():
        raise ValueError(f"--merge: checkpoint {str(checkpoint)!r} holds no LoRA adapter ({ADAPTER_DIR}/)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"OUT {str(out)!r} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    adapted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if merge:
        settings = json.loads((adapter_dir / "adapter_config.json").read_text())
        scale = settings["lora_alpha"] / settings["r"]
        adapted = pairs(load_file(adapter_dir / ADAPTER_FILE))
    elif adapter_dir.is_dir():
        shutil.copytree(adapter_dir, out / ADAPTER_DIR)
    for weights in sorted(checkpoint.glob("*.safetensors")):
        tensors = load_file(weights)
        for name in adapted.keys() & tensors.keys():
            a, b = adapted.pop(name)
            tensors[name] = merged_weight(tensors[name], a, b, scale).to(tensors[name].dtype)
        if dtype is not None:
            target = getattr(torch, dtype)
            tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, out / weights.name, metadata={"format": "pt"})
    if adapted:
        raise ValueError(f"--merge: the adapter adapts weights the checkpoint lacks: {sorted(adapted)[:3]}")
    if dtype is not None:
        tree = json.loads((out / "config.json").read_text())
        tree["torch_dtype"] = tree["dtype"] = dtype
        (out / "config.json").write_text(json.dumps(tree, indent=2))
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint directory, <run>/checkpoints/step_<k>")
    parser.add_argument("out", type=Path, help="an empty or new directory")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast the weights")
    parser.add_argument("--merge", action="store_true", help="merge a LoRA checkpoint's adapter into the weights")
    args = parser.parse_args(argv)
    try:
        files = export(args.checkpoint, args.out, args.dtype, args.merge)
    except ValueError as exc:
        print(f"rlstack: error: {exc}", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.out)
    AutoTokenizer.from_pretrained(args.out)
    print(f"exported {', '.join(files)} to {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
