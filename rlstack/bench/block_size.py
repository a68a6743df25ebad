"""vLLM rollouts with its default KV block size against the recipe's

The demo's rollouts decoded by vLLM with its default KV block size and with the recipe's, side by side.

Each block size gets its own engine in a child process (one vLLM per process); the
engines take turns, one round each, so machine noise hits both alike. A round is one
training step's generation: the demo's first 16 prompts, 8 samples each at T=1, up to
``max_new_tokens`` tokens, from the embedded SmolLM2, after the prefix cache is reset
(as after every weight sync).
"""

import argparse
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import Recipe, load_recipe
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import load_prompt_data
from rollout.vllm_engine import configure_environment

RECIPE = "recipes/grpo_arith_smollm2.yaml"


def serve(recipe: Recipe, block_size: int | None, conn: Connection) -> None:
    """Start an engine, then answer each request with one round's ``(tokens, seconds)``; ``None`` ends it."""
    configure_environment(os.environ, "cpu")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    rollout = recipe.rollout
    tokenizer = models.load_tokenizer(recipe.model.path)
    train = load_prompt_data(recipe.data, tokenizer).train
    prompts = [
        TokensPrompt(prompt_token_ids=render_prompt(tokenizer, train[i].messages, recipe.data.system_prompt))
        for i in range(rollout.num_prompts)
    ]
    params = SamplingParams(n=rollout.num_samples, temperature=1.0, max_tokens=rollout.max_new_tokens, logprobs=0)
    llm = LLM(
        model=models.engine_dir(recipe.model.path),
        dtype=rollout.dtype,
        seed=0,
        max_model_len=rollout.max_model_len,
        enforce_eager=True,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        kv_cache_memory_bytes=int(rollout.kv_cache_gb * 2**30),
        block_size=block_size,
    )
    conn.send(llm.llm_engine.vllm_config.cache_config.block_size)
    while conn.recv() is not None:
        llm.reset_prefix_cache()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        conn.send((sum(len(s.token_ids) for o in outputs for s in o.outputs), time.perf_counter() - start))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench block-size", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("docs/results/block_size_cpu.json"))
    args = parser.parse_args(argv)
    recipe = load_recipe(RECIPE, ["rollout.engine=vllm"])
    if recipe.rollout.block_size is None:
        parser.error(f"{RECIPE} sets no rollout.block_size to compare with vLLM's default")
    context = multiprocessing.get_context("spawn")
    engines: dict[str, Connection] = {}
    children = []
    for block_size in (None, recipe.rollout.block_size):
        parent, child = context.Pipe()
        process = context.Process(target=serve, args=(recipe, block_size, child))
        process.start()
        engines[str(parent.recv())] = parent  # vLLM's resolved block size, one engine at a time
        children.append(process)
    totals = {name: [0, 0.0] for name in engines}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, conn in engines.items():
                conn.send(round_)
                tokens, seconds = conn.recv()
                print(f"round {round_} block size {name}: {tokens} tokens, {seconds:.1f} s", flush=True)
                if round_:
                    totals[name][0] += tokens
                    totals[name][1] += seconds
    finally:
        for conn in engines.values():
            conn.send(None)
        for process in children:
            process.join()
    tok_s = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    default, chosen = engines
    figures = {
        "workload": f"{recipe.rollout.num_prompts} prompts x {recipe.rollout.num_samples} samples, T=1, "
        f"{recipe.rollout.max_new_tokens} new tokens, {recipe.rollout.dtype}, prefix cache reset each round",
        "rounds": args.rounds,
        **{f"block_{name}_tok_s": round(value, 1) for name, value in tok_s.items()},
        "speedup": round(tok_s[chosen] / tok_s[default], 2),
    }
    record_result(
        "block_size",
        figures,
        {f"block_{chosen}_faster": tok_s[chosen] > tok_s[default]},
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
