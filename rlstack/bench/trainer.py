"""FSDP2 against DeepSpeed ZeRO 1/2/3: step-1 losses, tokens/s, MFU, memory

Every backend starts from the same random init and takes the same three steps on the
same synthetic batches: GRPO (old logprobs are the policy's own), then SFT, then DPO
(reference logprobs are the initial policy's). Their losses and gradient norms must
agree across backends. Then steps of each objective on a larger batch (``--presets``,
``--seq-lens``, ``--objectives``, ``--settings``) are timed for tokens/s, the model FLOPs
utilisation against the card's bf16 peak (``rlstack.hardware``) and the peak GPU memory a
rank allocated; a backend that runs out of memory is recorded as not fitting. ``--fit``
instead finds, for each backend, the largest of the given presets that trains on one GPU.
"""

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from actors.calls import ActorFailure
from actors.trainer import TrainerGroup
from rlstack import models
from rlstack.bench.result import command_line, record_result
from rlstack.config import RANDOM_PREFIX, Recipe, load_recipe
from rlstack.data.batching import by_rank, shard
from rlstack.hardware import bf16_peak_flops
from rlstack.types import Completion, PreferenceBatch, PreferencePair, Sample, SFTBatch, SFTExample, TrainBatch

RECIPE = "recipes/grpo_tiny_random.yaml"
SETTINGS = {
    "default": [],
    "eager": ["trainer.compile=false"],
    "sdpa_eager": ["trainer.attention=sdpa", "trainer.compile=false"],
    "activation_checkpointing": ["trainer.activation_checkpointing=true"],
}
"""Trainer settings timed against each other. ``default`` is the recipe's autos: on a GPU FlexAttention and
compiled layers; ``sdpa_eager`` is the dense-mask path without compiling."""
BACKENDS = {
    "fsdp2": ["trainer.backend=fsdp2"],
    "fsdp2_lora": ["trainer.backend=fsdp2", "model.lora={rank: 16, alpha: 32}"],
    "zero1": ["trainer.backend=deepspeed", "trainer.deepspeed.zero_stage=1"],
    "zero2": ["trainer.backend=deepspeed", "trainer.deepspeed.zero_stage=2"],
    "zero3": ["trainer.backend=deepspeed", "trainer.deepspeed.zero_stage=3"],
    "zero3_offload": [
        "trainer.backend=deepspeed",
        "trainer.deepspeed.zero_stage=3",
        "trainer.deepspeed.offload_optimizer=true",
        "trainer.deepspeed.offload_params=true",
    ],
}


def random_ids(rng: random.Random, length: int) -> tuple[int, ...]:
    return tuple(rng.randrange(100, 20_000) for _ in range(length))


def grpo_samples(num: int, prompt_len: int, response_len: int, seed: int) -> list[Sample]:
    """``num`` prompt-response pairs of varying length, advantages alternating +1 and -1."""
    rng = random.Random(seed)
    samples = []
    for i in range(num):
        response = random_ids(rng, rng.randint(response_len // 2, response_len))
        completion = Completion(response, (0.0,) * len(response), "length", 0, "")
        samples.append(Sample(random_ids(rng, rng.randint(prompt_len // 2, prompt_len)), completion, (-1.0) ** i))
    return samples


def on_policy(group: TrainerGroup, samples: list[Sample], num_ranks: int) -> list[TrainBatch]:
    """GRPO shards whose old logprobs are the current policy's, so the first step's ratios are 1."""
    shards = shard(samples, num_ranks)
    logprobs = group.logprobs(shards, "grpo")
    num_tokens = sum(len(s.completion.token_ids) for s in samples)
    max_tokens = max(len(s.completion.token_ids) for s in samples)
    return [
        TrainBatch(
            tuple(
                Sample(s.prompt_ids, Completion(s.completion.token_ids, tuple(lp), "length", 0, ""), s.advantage)
                for s, lp in zip(part, rows, strict=True)
            ),
            num_tokens,
            len(samples),
            max_tokens,
        )
        for part, rows in zip(shards, logprobs, strict=True)
    ]


def sft_batches(num: int, length: int, seed: int, num_ranks: int) -> list[SFTBatch]:
    """Examples whose second half is the trained (assistant) part."""
    rng = random.Random(seed)
    examples = []
    for _ in range(num):
        size = rng.randint(length // 2, length)
        examples.append(SFTExample(random_ids(rng, size), (0,) * (size // 2) + (1,) * (size - size // 2)))
    num_tokens = sum(sum(e.loss_mask[1:]) for e in examples)
    return [SFTBatch(tuple(part), num_tokens) for part in by_rank(examples, num_ranks)]


def preference_pairs(num: int, length: int, seed: int) -> list[PreferencePair]:
    rng = random.Random(seed)
    return [
        PreferencePair(random_ids(rng, length), random_ids(rng, length // 2), random_ids(rng, length // 2 + 1))
        for _ in range(num)
    ]


def three_steps(recipe: Recipe) -> dict[str, float]:
    """Loss and gradient norm of a GRPO, an SFT and a DPO step from the recipe's init, and the weights' sum."""
    ranks = recipe.placement.num_trainer_ranks
    group = TrainerGroup(recipe)
    try:
        pairs = preference_pairs(8, 16, seed=3)
        reference = group.logprobs(by_rank(pairs, ranks), "dpo")
        figures: dict[str, float] = {}
        grpo = group.step(on_policy(group, grpo_samples(8, 24, 16, seed=1), ranks), "grpo")
        sft = group.step(sft_batches(8, 32, seed=2, num_ranks=ranks), "sft")
        dpo_shards = [
            PreferenceBatch(tuple(share), tuple(ref), len(pairs))
            for share, ref in zip(by_rank(pairs, ranks), reference, strict=True)
        ]
        dpo = group.step(dpo_shards, "dpo")
        for name, metrics in (("grpo", grpo), ("sft", sft), ("dpo", dpo)):
            figures |= {f"{name}_loss": metrics["loss"], f"{name}_grad_norm": metrics["grad_norm"]}
        figures["weights_sum"] = sum(group.fingerprint().values())
    finally:
        group.shutdown()
    return figures


def timed_batches(objective: str, group: TrainerGroup, num_seqs: int, max_len: int, ranks: int) -> tuple[Any, int]:
    """A step's shards for ``objective`` on ``num_seqs`` sequences of up to ``max_len`` tokens, and the tokens it
    runs through the model (DPO: a pair's chosen and rejected sequences both)."""
    if objective == "grpo":
        samples = grpo_samples(num_seqs, max_len // 2, max_len // 2, seed=4)
        tokens = sum(len(s.prompt_ids) + len(s.completion.token_ids) for s in samples)
        return on_policy(group, samples, ranks), tokens
    if objective == "sft":
        batches = sft_batches(num_seqs, max_len, seed=5, num_ranks=ranks)
        return batches, sum(len(e.input_ids) for b in batches for e in b.examples)
    pairs = preference_pairs(num_seqs // 2, max_len // 2, seed=6)
    reference = group.logprobs(by_rank(pairs, ranks), "dpo")
    tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    shards = [
        PreferenceBatch(tuple(share), tuple(ref), len(pairs))
        for share, ref in zip(by_rank(pairs, ranks), reference, strict=True)
    ]
    return shards, tokens


def throughput(recipe: Recipe, objective: str, num_steps: int, num_seqs: int, max_len: int) -> dict[str, float]:
    """Median tokens/s over ``num_steps`` steps of ``objective`` on ``num_seqs`` sequences of up to ``max_len``
    tokens, after a warm-up step (which compiles, with ``trainer.compile``), and the peak GPU memory a rank
    allocated."""
    ranks = recipe.placement.num_trainer_ranks
    group = TrainerGroup(recipe)
    try:
        rates, peaks = [], []
        for _ in range(num_steps + 1):
            batches, tokens = timed_batches(objective, group, num_seqs, max_len, ranks)
            start = time.perf_counter()
            metrics = group.step(batches, objective)
            rates.append(tokens / (time.perf_counter() - start))
            peaks.append(metrics.get("memory/peak_gib", 0.0))  # reported on a GPU only
    finally:
        group.shutdown()
    figures = {"tok_s": round(statistics.median(rates[1:]), 1)}
    return figures | ({"peak_gib": round(max(peaks), 2)} if recipe.placement.device == "cuda" else {})


def model_flops_utilization(tok_s: float, preset: str, card: str) -> float | None:
    """``6 * params * tok_s / peak``: the usual estimate of training FLOPs (forward 2, backward 4 per parameter
    and token; attention's own FLOPs left out), against the card's dense bf16 peak; ``None`` off the table."""
    peak = bf16_peak_flops(card)
    if peak is None:
        return None
    params = sum(math.prod(shape) for _, shape in models.parameter_shapes(f"{RANDOM_PREFIX}{preset}"))
    return round(6 * params * tok_s / peak[1], 4)


def common_overrides(device: str, preset: str) -> list[str]:
    gpu = device == "cuda"
    return [
        f"model.path=random:{preset}",
        f"placement.device={device}",
        f"placement.num_trainer_ranks={1 if gpu else 2}",
        f"placement.trainer_gpus={1 if gpu else 0}",
        f"trainer.compute_dtype={'bfloat16' if gpu else 'float32'}",
        "trainer.micro_batch_tokens=8192",
        "trainer.lr=1e-4",
        "algorithm.kl_coef=0",
        "tracking.wandb=disabled",
    ]


def out_of_memory(error: Exception) -> bool:
    """A CUDA allocation failure, or a worker that Ray or the kernel killed for lack of host memory (the trainer
    group reports a rank's death as ``ActorFailure``, caused by Ray's ``ActorDiedError``)."""
    died = error.__cause__ if isinstance(error, ActorFailure) else error
    return isinstance(died, (ray.exceptions.OutOfMemoryError, ray.exceptions.ActorDiedError)) or (
        "out of memory" in str(error).lower()
    )


def largest_fitting(backend: str, presets: list[str], device: str, output: Path, figures: dict[str, Any]) -> None:
    """Try ``presets`` (smallest first) with ``backend`` on two GRPO steps of 8 sequences of up to 512 tokens,
    until one runs out of memory; records each one's peak memory, the failure, and the largest that fit."""
    figures[f"fit_{backend}_largest"] = None
    for preset in presets:
        recipe = load_recipe(RECIPE, [*common_overrides(device, preset), *BACKENDS[backend]])
        try:
            result = throughput(recipe, "grpo", num_steps=1, num_seqs=8, max_len=512)
        except (ray.exceptions.RayError, ActorFailure) as error:
            if not out_of_memory(error):
                raise
            figures[f"fit_{backend}_{preset}"] = f"does not fit: {type(error).__name__}"
            keep_partial(figures, output)
            return
        if "peak_gib" in result:  # measured on a GPU only
            figures[f"fit_{backend}_{preset}_peak_gib"] = result["peak_gib"]
        figures[f"fit_{backend}_largest"] = preset
        keep_partial(figures, output)


def keep_partial(figures: dict[str, Any], output: Path) -> None:
    """The figures so far, so that a run cut short (out of time on the device) keeps what it measured."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": command_line(), **figures, "complete": False}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench trainer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        nargs="*",
        choices=list(BACKENDS),
        default=[b for b in BACKENDS if b != "fsdp2_lora"],
        help="fsdp2_lora (a rank-16 adapter on FSDP2) only when named: its losses differ from full training's",
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--parity-preset", default="smollm2-135m" if device == "cuda" else "tiny")
    parser.add_argument(
        "--presets", nargs="*", default=["llama-1b"] if device == "cuda" else ["tiny"], help="models timed"
    )
    parser.add_argument(
        "--seq-lens", nargs="*", type=int, default=[512, 2048] if device == "cuda" else [128], help="tokens a sequence"
    )
    parser.add_argument(
        "--tokens-per-step",
        type=int,
        default=64 * 512 if device == "cuda" else 16 * 128,
        help="a step's sequences: this many tokens' worth at the longest length",
    )
    parser.add_argument("--objectives", nargs="*", choices=["grpo", "sft", "dpo"], default=["grpo", "sft", "dpo"])
    parser.add_argument(
        "--settings", nargs="*", choices=list(SETTINGS), default=["default"], help="trainer settings, each timed"
    )
    parser.add_argument("--skip-parity", action="store_true", help="time only; no loss parity across backends")
    parser.add_argument("--num-steps", type=int, default=3)
    parser.add_argument(
        "--fit",
        nargs="*",
        metavar="PRESET",
        help="only find the largest of these presets (smallest first) each backend trains",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    default_name = f"trainer_fit_{device}.json" if args.fit else f"trainer_backends_{device}.json"
    output = args.output or Path("docs/results") / default_name
    ray.init(
        include_dashboard=False, runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git", ".device"]}
    )
    card = torch.cuda.get_device_name() if device == "cuda" else "CPU only"
    peak = bf16_peak_flops(card)
    figures: dict[str, Any] = {
        "card": card,
        "mfu_peak": {"table_entry": peak[0], "bf16_dense_flops": peak[1]} if peak else None,
        "mfu_formula": "6 * params * tok_s / bf16_dense_flops (params with the tied embedding once; no attention)",
    }
    if args.fit:
        try:
            for backend in args.backends:
                largest_fitting(backend, args.fit, device, output, figures)
        finally:
            ray.shutdown()
        fitted = {b: figures[f"fit_{b}_largest"] for b in args.backends}
        record_result(
            "trainer_fit",
            figures,
            {"every_backend_fits_one": all(fitted.values())},
            output,
        )
        return 0
    run_root = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    try:
        for backend in [] if args.skip_parity else args.backends:
            overrides = [*common_overrides(device, args.parity_preset), *BACKENDS[backend]]
            recipe = load_recipe(RECIPE, [*overrides, f"tracking.run_root={run_root}"])
            figures |= {f"{backend}_{k}": round(v, 6) for k, v in three_steps(recipe).items()}
            keep_partial(figures, output)
        for preset, seq_len, backend, objective, setting in itertools.product(
            args.presets, args.seq_lens, args.backends, args.objectives, args.settings
        ):
            name = f"{preset}_{seq_len}_{backend}_{objective}_{setting}"
            overrides = [*common_overrides(device, preset), *BACKENDS[backend], *SETTINGS[setting]]
            recipe = load_recipe(RECIPE, [*overrides, f"trainer.micro_batch_tokens={max(8192, seq_len)}"])
            num_seqs = max(1, args.tokens_per_step // seq_len)
            try:
                result: dict[str, Any] = throughput(recipe, objective, args.num_steps, num_seqs, seq_len)
                result["mfu"] = model_flops_utilization(result["tok_s"], preset, figures["card"])
            except (ray.exceptions.RayError, ActorFailure) as error:
                if not out_of_memory(error):
                    raise
                result = {"fits": False}
            figures |= {f"{name}_{k}": v for k, v in result.items()}
            keep_partial(figures, output)
    finally:
        ray.shutdown()
    targets: dict[str, bool] = {}
    if not args.skip_parity:
        reference = args.backends[0]
        worst = max(
            abs(figures[f"{b}_{name}_loss"] - figures[f"{reference}_{name}_loss"])
            / max(abs(figures[f"{reference}_{name}_loss"]), 1e-6)
            for b in args.backends
            for name in ("grpo", "sft", "dpo")
        )
        figures["max_relative_loss_difference"] = worst
        targets["losses_agree_within_2%"] = worst <= 0.02
    headline = figures.get("llama-1b_512_fsdp2_grpo_default_mfu")
    if headline is not None:
        targets["grpo_llama-1b_512_fsdp2_mfu_at_least_45%"] = headline >= 0.45
    record_result("trainer", figures, targets, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
