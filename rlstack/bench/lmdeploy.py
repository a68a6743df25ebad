"""LMDeploy on one GPU: generation, weight sync, colocated GRPO

Random-init models with SmolLM2's tokenizer (nothing is downloaded), measured side by
side in one run on the card named in the result:

- generation tok/s of the raw ``lmdeploy.pipeline`` (``infer``) against the same
  requests through the RolloutGroup (Ray actor, Ray executor, ``Completion``s);
- weight-sync seconds and GiB/s into the engine for a 0.1 B and a 1 B model: one
  ``update_params`` call and 256 MB buckets, both flattened as the engine sends them, and
  256 MB buckets of per-tensor IPC handles;
- a colocated GRPO cycle (engine asleep while the trainer updates, CUDA IPC sync):
  seconds per phase, and the GPU memory in use at its peak during training (engine
  asleep), during generation (engine awake) and over the whole cycle.
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ray
import torch

from rlstack import models
from rlstack.bench.result import record_result
from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from rlstack.data.chat import render_prompt
from rlstack.memory import DeviceMemoryPeak
from rlstack.types import Sample, SamplingParams
from rollout.weight_broadcast import plan_buckets

RECIPE = "recipes/grpo_tiny_random.yaml"
GIB = 2**30


def weights_dir(preset: str, root: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """A random-init model built on the GPU, saved with its tokenizer; returns the directory and its bf16 weights."""
    path = f"random:{preset}"
    with torch.device("cuda"):
        model = models.load_model(path, dtype=torch.bfloat16)
    target = root / preset
    model.save_pretrained(target)
    models.load_tokenizer(path).save_pretrained(target)
    return str(target), {name: param.detach() for name, param in model.named_parameters()}


def measure(generate: Callable[[], int], rounds: int) -> float:
    """Tokens per second over ``rounds`` calls after one warm-up call."""
    generate()
    tokens, start = 0, time.perf_counter()
    for _ in range(rounds):
        tokens += generate()
    return tokens / (time.perf_counter() - start)


def generation(root: Path, rounds: int) -> dict[str, object]:
    """The raw pipeline first, closed before the RolloutGroup starts: each Ray executor takes its own GPU share."""
    from lmdeploy import PytorchEngineConfig, pipeline

    from rollout.lmdeploy_engine import generation_config, sample_seeds

    path, _ = weights_dir("smollm2-135m", root)
    tokenizer = models.load_tokenizer(path)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": f"Count to {i}."}]) for i in range(64)]
    params = SamplingParams(n=4, max_new_tokens=256, temperature=1.0)
    config = PytorchEngineConfig(
        dtype="bfloat16",
        cache_max_entry_count=0.3,
        distributed_executor_backend="ray",
        logprobs_mode="raw_logprobs",
    )
    raw = pipeline(path, backend_config=config, log_level="ERROR")
    texts = [tokenizer.decode(p) for p in prompts for _ in range(params.n)]
    raw_config = [generation_config(params, seed) for seed in sample_seeds(params.seed, len(texts))]
    raw_tok_s = measure(
        lambda: sum(len(r.token_ids) for r in raw.infer(texts, gen_config=raw_config, do_preprocess=False)), rounds
    )
    raw.close()

    recipe = load_recipe(RECIPE, [*common_overrides("smollm2-135m"), f"model.path={path}"])
    with GRPOController(recipe, root / "runs" / "generation") as controller:
        controller.sync_weights()
        assert controller.rollout is not None
        group = controller.rollout
        group_tok_s = measure(lambda: sum(len(c.token_ids) for g in group.generate(prompts, params) for c in g), rounds)
    return {
        "generation_workload": "64 prompts x 4 samples, 256 new tokens, bf16, 135M",
        "raw_pipeline_tok_s": round(raw_tok_s),
        "rollout_group_tok_s": round(group_tok_s),
        "group_over_raw": round(group_tok_s / raw_tok_s, 3),
    }


def sync(preset: str, root: Path, rounds: int) -> dict[str, float]:
    """Seconds to push every weight (already on the GPU) into a running engine, three ways."""
    from lmdeploy.serve.openai.protocol import UpdateParamsRequest
    from lmdeploy.utils import serialize_state_dict

    from rollout.lmdeploy_engine import LMDeployEngine

    path, weights = weights_dir(preset, root)
    engine = LMDeployEngine(path, torch.bfloat16, cache_fraction=0.2)
    num_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    plan = plan_buckets([(n, tuple(t.shape)) for n, t in weights.items()], bucket_mb=256, element_size=2)

    def buckets() -> list[dict[str, torch.Tensor]]:
        return [{name: weights[name] for name, _ in entries} for entries in plan]

    def per_tensor() -> None:
        """The unflattened format: one CUDA IPC handle per tensor."""
        parts = buckets()
        for i, part in enumerate(parts):
            request = UpdateParamsRequest(
                serialized_named_tensors=serialize_state_dict(part), finished=i == len(parts) - 1
            )
            engine.engine.engine.update_params(request)
        torch.cuda.synchronize()

    version = iter(range(1, 10_000))
    ways = {
        "one_call": lambda: engine.load_weights(next(version), [weights]),
        "buckets_256mb": lambda: engine.load_weights(next(version), buckets()),
        "per_tensor_256mb": per_tensor,
    }
    figures: dict[str, float] = {f"sync_{preset}_gib": round(num_bytes / GIB, 3)}
    for name, push in ways.items():
        push()  # warm-up
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            push()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        figures[f"sync_{preset}_{name}_s"] = round(seconds, 4)
        figures[f"sync_{preset}_{name}_gib_s"] = round(num_bytes / GIB / seconds, 1)
    engine.close()
    return figures


def common_overrides(preset: str) -> list[str]:
    return [
        f"model.path=random:{preset}",
        "rollout.engine=lmdeploy",
        "rollout.dtype=bfloat16",
        "rollout.gpu_memory_utilization=0.3",
        "rollout.num_prompts=32",
        "rollout.num_samples=8",
        "rollout.max_new_tokens=128",
        "placement.device=cuda",
        "placement.num_trainer_ranks=1",
        "placement.trainer_gpus=0.5",
        "placement.rollout_gpus=0.5",
        "placement.num_threads=8",
        "trainer.compute_dtype=bfloat16",
        "trainer.micro_batch_tokens=16384",
        "tracking.wandb=disabled",
        "tracking.console=false",
    ]


def used_bytes() -> int:
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return total - free


def colocated_cycle(root: Path, num_steps: int) -> dict[str, object]:
    """GRPO steps with the engine asleep during training: seconds per phase, and GPU memory.

    Memory is the whole GPU's (trainer, engine workers and this process): the peak over
    whole steps, the peak of one update with the engine asleep, and what the awake
    engine adds (weights plus KV cache) over the asleep one.
    """
    overrides = [
        *common_overrides("smollm2-135m"),
        "rollout.weight_transport=cuda_ipc",
        "rollout.sleep_while_training=true",
        f"trainer.num_steps={num_steps}",
    ]
    recipe = load_recipe(RECIPE, overrides)
    phases: dict[str, list[float]] = {}
    cycle_peak = 0
    with GRPOController(recipe, root / "runs" / "colocated") as controller:
        assert controller.rollout is not None
        controller.sync_weights()
        for step in range(1, num_steps + 1):
            with DeviceMemoryPeak() as cycle:
                metrics = controller.step(step)
            cycle_peak = max(cycle_peak, cycle.peak_bytes)
            for key, value in metrics.items():
                if key.startswith("time/"):
                    phases.setdefault(key, []).append(value)
        awake = used_bytes()
        prompts = [controller.prompt_ids(p) for p in controller.sampler.next_batch(recipe.rollout.num_prompts)]
        groups = controller.rollout.generate(prompts, SamplingParams(n=recipe.rollout.num_samples, max_new_tokens=128))
        samples = [
            Sample(tuple(p), c, 1.0 if i % 2 else -1.0)
            for p, g in zip(prompts, groups, strict=True)
            for i, c in enumerate(g)
        ]
        controller.rollout.sleep()
        asleep = used_bytes()
        with DeviceMemoryPeak() as train:
            controller.train(samples)
    figures: dict[str, object] = {
        f"grpo_{k.removeprefix('time/')}_s": round(statistics.median(v[1:] or v), 3) for k, v in phases.items()
    }
    return figures | {
        "peak_gib_whole_steps": round(cycle_peak / GIB, 2),
        "peak_gib_update_engine_asleep": round(train.peak_bytes / GIB, 2),
        "engine_awake_extra_gib": round((awake - asleep) / GIB, 2),
        "colocated_within_update_plus_engine": cycle_peak <= train.peak_bytes + (awake - asleep) + 0.25 * GIB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlstack bench lmdeploy", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["generation", "sync", "colocated"], nargs="*")
    parser.add_argument("--output", type=Path, default=Path("docs/results/lmdeploy_gpu.json"))
    args = parser.parse_args(argv)
    parts = args.only or ["generation", "sync", "colocated"]
    root = Path(tempfile.mkdtemp(prefix="bench-lmdeploy-"))
    ray.init(include_dashboard=False)
    figures: dict[str, object] = {"card": torch.cuda.get_device_name()}
    try:
        if "generation" in parts:
            figures |= generation(root, args.rounds)
        if "sync" in parts:
            for preset in ("smollm2-135m", "llama-1b"):
                figures |= sync(preset, root, args.rounds)
        if "colocated" in parts:
            figures |= colocated_cycle(root, num_steps=4)
    finally:
        ray.shutdown()
    targets = {}
    if "group_over_raw" in figures:
        targets["group_over_raw>=0.9"] = figures["group_over_raw"] >= 0.9  # type: ignore[operator]
    if "sync_llama-1b_buckets_256mb_gib_s" in figures:
        targets["sync_1b_gib_s>=20"] = figures["sync_llama-1b_buckets_256mb_gib_s"] >= 20  # type: ignore[operator]
    record_result("lmdeploy", figures, targets, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
