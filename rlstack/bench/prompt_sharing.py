"""GRPO forward and backward: padded against shared-prompt rows

One GRPO batch's forward and backward through the embedded model, laid out padded (every sample with its own
copy of the prompt) and as shared-prompt rows, side by side.

The batch is the demo's: 16 of its prompts, 8 responses each, of lengths drawn uniformly
from 1 to ``max_new_tokens`` (seeded), under the recipe's ``micro_batch_tokens``. Both
layouts must give the same loss; the figures are the tokens each runs through the model
and the median seconds of a forward and backward over the whole batch, alternating
layouts round by round.
"""

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel

from rlstack import models
from rlstack.algorithms import token_logprobs
from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.data.attention import Attention
from rlstack.data.batching import Collated, collate, micro_batches
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import load_prompt_data
from rlstack.data.shared_prompt import SharedPromptRow, collate_shared_prompt, shared_prompt_rows
from rlstack.forward import add_response_scoring, padded_response_logits, shared_prompt_scores
from rlstack.hardware import resolve_dtype
from rlstack.types import Completion, Sample

RECIPE = "recipes/grpo_arith_smollm2.yaml"
LOSS_BOUND = {"float32": 1e-5, "bfloat16": 1e-3}  # of sum |A * logprob|; the layouts sum in different orders
Layout = Callable[[PreTrainedModel, list[Sample], int], Iterator[tuple[torch.Tensor, Collated | SharedPromptRow]]]


def demo_batch(seed: int, model_path: str) -> tuple[list[Sample], int]:
    """The demo's batch shape with random response tokens, and its ``micro_batch_tokens``."""
    recipe = load_recipe(RECIPE, ["rollout.engine=hf"])  # only its data and batch shape are used
    tokenizer = models.load_tokenizer(model_path)
    train = load_prompt_data(recipe.data, tokenizer).train
    prompts = [train[i] for i in range(recipe.rollout.num_prompts)]
    rng = random.Random(seed)
    samples = []
    for prompt in prompts:
        ids = tuple(render_prompt(tokenizer, prompt.messages, recipe.data.system_prompt))
        for i in range(recipe.rollout.num_samples):
            response = tuple(rng.randrange(100, 20_000) for _ in range(rng.randint(1, recipe.rollout.max_new_tokens)))
            samples.append(Sample(ids, Completion(response, (0.0,) * len(response), "stop", 0, ""), (-1.0) ** i))
    return samples, recipe.trainer.micro_batch_tokens


def padded(model: PreTrainedModel, samples: list[Sample], budget: int) -> Iterator[tuple[torch.Tensor, Collated]]:
    """``[B, R]`` logprobs of each padded micro-batch, with the micro-batch."""
    device = next(model.parameters()).device
    for group in micro_batches(samples, budget):
        data = collate(group, pad_id=0)
        yield token_logprobs(padded_response_logits(model, data, device), data.response_ids.to(device)), data


def shared(
    model: PreTrainedModel, samples: list[Sample], budget: int
) -> Iterator[tuple[torch.Tensor, SharedPromptRow]]:
    """``[B, R]`` logprobs of each shared-prompt row, with the row, as the trainer scores them (the model's
    attention's mask, the sampled tokens scored in chunks)."""
    device = next(model.parameters()).device
    attention: Attention = "flex" if model.config._attn_implementation == "flex_attention" else "sdpa"
    for row in shared_prompt_rows(samples, budget):
        data = collate_shared_prompt(row, pad_id=0)
        scores, _ = shared_prompt_scores(model, data, device, data.attention_mask(device, attention), 1.0)
        yield data.scatter(scores), data


LAYOUTS: dict[str, Layout] = {"padded": padded, "shared": shared}


def forward_backward(
    model: PreTrainedModel, samples: list[Sample], budget: int, layout: Layout
) -> tuple[float, float, int]:
    """The batch's policy-gradient loss ``-sum(A * logprob)`` with its backward, the sum of its terms' sizes
    ``sum |A * logprob|`` (the advantages alternate in sign, so the loss itself mostly cancels), and the tokens
    run."""
    total, scale, tokens = 0.0, 0.0, 0
    for logprobs, data in layout(model, samples, budget):
        weights = (data.response_mask * data.advantages.unsqueeze(-1)).to(logprobs.device)  # [B, R]
        loss = -(logprobs * weights).sum()
        loss.backward()
        total, tokens = total + loss.item(), tokens + data.input_ids.numel()
        scale += (logprobs.detach() * weights).abs().sum().item()
    return total, scale, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench prompt-sharing", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2", help="a model path; random:smollm2-135m where no weights are")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attention", choices=["auto", "sdpa", "flex"], default="auto", help="as trainer.attention")
    parser.add_argument("--output", type=Path, default=Path("docs/results/prompt_sharing_cpu.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    samples, budget = demo_batch(args.seed, args.model)
    dtype = resolve_dtype("auto", device.type)
    attention = args.attention if args.attention != "auto" else "flex" if device.type == "cuda" else "sdpa"
    model = models.load_model(args.model, dtype=getattr(torch, dtype), attention=attention, device=device.type)
    add_response_scoring(model, load_recipe(RECIPE, ["rollout.engine=hf"]).trainer.logits_chunk_tokens)
    model.to(device)  # type: ignore[arg-type]  # transformers' decorator confuses mypy
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    losses: dict[str, float] = {}
    scales: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, layout in LAYOUTS.items():
            model.zero_grad()
            start = time.perf_counter()
            losses[name], scales[name], tokens[name] = forward_backward(model, samples, budget, layout)
            if round_:
                seconds[name].append(time.perf_counter() - start)
            print(f"round {round_} {name}: {tokens[name]} tokens, {time.perf_counter() - start:.1f} s", flush=True)
    median = {name: statistics.median(times) for name, times in seconds.items()}
    loss_gap = abs(losses["shared"] - losses["padded"]) / max(scales["padded"], 1e-9)  # against the terms' size
    figures = {
        "workload": f"{len(samples)} samples, 16 prompts x 8, responses 1-40 tokens, budget {budget}",
        "model": args.model,
        "dtype": dtype,
        "attention": attention,
        "rounds": args.rounds,
        "response_tokens": sum(len(s.completion.token_ids) for s in samples),
        "padded_tokens": tokens["padded"],
        "shared_tokens": tokens["shared"],
        "padded_s": round(median["padded"], 2),
        "shared_s": round(median["shared"], 2),
        "shared_speedup": round(median["padded"] / median["shared"], 2),
        "loss_relative_gap": loss_gap,
    }
    targets = {"same_loss": loss_gap < LOSS_BOUND[dtype], "shared_faster": median["shared"] < median["padded"]}
    record_result(
        "prompt_sharing",
        figures,
        targets,
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
