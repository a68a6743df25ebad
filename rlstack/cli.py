"""The ``rlstack`` command line.

Commands:
  rlstack train RECIPE [key.path=value ...]   train with a local Ray (or the one in RAY_ADDRESS)
  rlstack export CHECKPOINT OUT [--dtype D]   a checkpoint as a plain Hugging Face model directory
  rlstack data inspect FILE [--recipe R]      row count, prompt lengths and reward fields of a data file
  rlstack serve [--host H] [--port P]         the HTTP run service (OpenAPI docs at /docs)
  rlstack runs submit|list|show|logs|cancel   the service's command-line client
  rlstack demo [--setup-seconds S]            the embedded GRPO recipe via ray job submit
  rlstack bench demo                          the demo, its figures written to docs/results/
  rlstack bench block-size                    vLLM rollouts with its default KV block size against the recipe's
  rlstack bench dtype                         float32 against bfloat16 matmuls on this CPU, and what ``auto`` picks
  rlstack bench gemm                          a decode step's matmuls: vLLM's oneDNN kernel against torch's
  rlstack bench gpu-grpo                      GRPO with the real SmolLM2 on one GPU, step time against TRL's
  rlstack bench lmdeploy                      LMDeploy on one GPU: generation, weight sync, colocated GRPO
  rlstack bench prompt-sharing                GRPO forward and backward: padded against shared-prompt rows
  rlstack bench reward                        reward-pool throughput and the cost of a hung call
  rlstack bench rollout                       vLLM tokens/s: raw LLM.generate against the RolloutGroup
  rlstack bench service                       run-service latency under 50 clients, and SSE delay, while a run trains
  rlstack bench sft                           SFT tokens/s with 1 and 2 FSDP2 ranks, and packing efficiency
  rlstack bench sync                          seconds to sync SmolLM2 into vLLM, against a plain copy
  rlstack bench trainer                       FSDP2 against DeepSpeed ZeRO 1/2/3: step-1 losses, tokens/s, memory
"""

import importlib
import sys

COMMANDS = {
    ("train",): "rlstack.train",
    ("export",): "rlstack.export",
    ("data", "inspect"): "rlstack.inspect_data",
    ("serve",): "rlstack.api.serve",
    ("runs",): "rlstack.api.client",
    ("demo",): "rlstack.demo",
    ("bench", "demo"): "rlstack.bench_demo",
    ("bench", "block-size"): "rlstack.bench_block_size",
    ("bench", "dtype"): "rlstack.bench_dtype",
    ("bench", "gemm"): "rlstack.bench_gemm",
    ("bench", "gpu-grpo"): "rlstack.bench_gpu_grpo",
    ("bench", "lmdeploy"): "rlstack.bench_lmdeploy",
    ("bench", "prompt-sharing"): "rlstack.bench_prompt_sharing",
    ("bench", "reward"): "rlstack.bench_reward",
    ("bench", "rollout"): "rlstack.bench_rollout",
    ("bench", "sft"): "rlstack.bench_sft",
    ("bench", "service"): "rlstack.bench_service",
    ("bench", "sync"): "rlstack.bench_sync",
    ("bench", "trainer"): "rlstack.bench_trainer",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for words, module in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            return importlib.import_module(module).main(argv[len(words) :])
    print(__doc__, file=sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
