"""vLLM tokens/s: raw LLM.generate against the RolloutGroup

Both sides get the demo's workload (16 arithmetic prompts x 8 samples, T=1, 40 new
tokens, the embedded SmolLM2) and are timed in alternating rounds in one run, so machine
noise hits both alike. The raw engine runs in this process; the RolloutGroup runs one
in-process engine in a Ray actor and adds scheduling, the object store and the
``Completion`` conversion. Both run eager on CPU, as the engine does there by default.
``--set`` overrides recipe keys, e.g. ``placement.device=cuda model.path=random:smollm2-135m``
on a GPU; a ``random:`` model starts both engines from placeholder weights.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import ray

from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.data.chat import render_prompt
from rlstack.types import SamplingParams
from rollout.vllm_engine import configure_environment

RECIPE = "recipes/grpo_arith_smollm2.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench rollout", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--output", type=Path, default=Path("docs/results/rollout_cpu.json"))
    args = parser.parse_args(argv)
    recipe = load_recipe(
        RECIPE, ["rollout.engine=vllm", "tracking.wandb=disabled", "tracking.console=false", *args.set]
    )
    device = recipe.placement.device
    rollout = recipe.rollout
    tokenizer = models.load_tokenizer(recipe.model.path)
    prompts = [
        render_prompt(tokenizer, [{"role": "user", "content": f"What is {i % 10} + {i // 10}?"}]) for i in range(16)
    ]
    params = SamplingParams(n=rollout.num_samples, max_new_tokens=rollout.max_new_tokens, temperature=1.0)

    configure_environment(os.environ, device)
    from vllm import LLM
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    raw = LLM(
        model=models.engine_dir(recipe.model.path),
        load_format="dummy" if recipe.model.path.startswith(models.RANDOM_PREFIX) else "auto",
        dtype=rollout.dtype,
        seed=0,
        max_model_len=rollout.max_model_len,
        enforce_eager=device == "cpu" if rollout.enforce_eager is None else rollout.enforce_eager,  # as the engine
        kv_cache_memory_bytes=int(rollout.kv_cache_gb * 2**30) if device == "cpu" else None,
        block_size=rollout.block_size,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
    )
    raw_params = VLLMSamplingParams(n=params.n, temperature=1.0, max_tokens=params.max_new_tokens, logprobs=0)
    raw_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def raw_round() -> tuple[int, float]:
        start = time.perf_counter()
        outputs = raw.generate(raw_prompts, raw_params, use_tqdm=False)
        return sum(len(s.token_ids) for o in outputs for s in o.outputs), time.perf_counter() - start

    ray.init(include_dashboard=False, runtime_env={"working_dir": ".", "excludes": [".venv", "runs", ".git"]})
    try:
        with GRPOController(recipe, Path("runs/bench-rollout") / time.strftime("%Y%m%d-%H%M%S")) as controller:
            controller.sync_weights()
            assert controller.rollout is not None
            group = controller.rollout

            def group_round() -> tuple[int, float]:
                start = time.perf_counter()
                groups = group.generate(prompts, params)
                return sum(len(c.token_ids) for g in groups for c in g), time.perf_counter() - start

            raw_round(), group_round()  # warm-up
            totals = {"raw": [0, 0.0], "group": [0, 0.0]}
            for _ in range(args.rounds):
                for name, measure in (("raw", raw_round), ("group", group_round)):
                    tokens, seconds = measure()
                    totals[name][0] += tokens
                    totals[name][1] += seconds
    finally:
        ray.shutdown()
    raw_tok_s, group_tok_s = (totals[k][0] / totals[k][1] for k in ("raw", "group"))
    figures = {
        "workload": f"{len(prompts)} prompts x {params.n} samples, {params.max_new_tokens} new tokens, {rollout.dtype}",
        "model": recipe.model.path,
        "rounds": args.rounds,
        "raw_vllm_tok_s": round(raw_tok_s, 1),
        "rollout_group_tok_s": round(group_tok_s, 1),
        "group_over_raw": round(group_tok_s / raw_tok_s, 3),
    }
    record_result(
        "rollout",
        figures,
        {"group_over_raw>=0.9": group_tok_s >= 0.9 * raw_tok_s},
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
