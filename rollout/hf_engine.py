"""HF transformers ``generate`` as a rollout engine: slow, exact, always available."""

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from rlstack import lora, models
from rlstack.types import Completion, SamplingParams
from rollout.base import Engine

MAX_SEQUENCES_PER_CALL = 128
"""Sequences per ``generate`` call."""


class SampledLogprobs(LogitsProcessor):
    """Records the logprob of each sampled token under the distribution it was sampled from.

    Placed after the temperature and top-p warpers, it sees the scores that are sampled.
    At step t it keeps ``log_softmax(scores)``; at step t+1 the token sampled at step t is
    the last column of ``input_ids``. So only ``[B]`` values per step are kept, never the
    ``[B, T, V]`` logits.
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # [B, V] log-probs of the current step
        self.steps: list[torch.Tensor] = []  # each [B]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:
            self.steps.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.pending = scores.float().log_softmax(dim=-1)
        return scores

    def result(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` logprobs, given ``last_tokens: [B]``, the tokens sampled at the final step."""
        assert self.pending is not None
        return torch.stack([*self.steps, self.pending.gather(-1, last_tokens[:, None]).squeeze(-1)], dim=1)


class HFEngine(Engine):
    """Batched sampling with ``model.generate``; logprobs are those of the sampling distribution."""

    def __init__(self, model_path: str, dtype: torch.dtype, device: str, seed: int = 0):
        self.tokenizer = models.load_tokenizer(model_path)
        self.model = models.load_model(model_path, dtype=dtype, seed=seed).to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self.policy_version = -1
        self.base_weights: dict[str, torch.Tensor] = {}  # the adapted weights' base values, once a LoRA adapter came

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.policy_version < 0:
            raise RuntimeError("engine has no weights from the trainer yet; call load_weights first")
        torch.manual_seed(params.seed)
        per_call = max(1, MAX_SEQUENCES_PER_CALL // params.n)
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), per_call):
            results.extend(self._generate_chunk(prompts[start : start + per_call], params))
        return results

    def _generate_chunk(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        greedy = params.temperature == 0
        recorder = SampledLogprobs()
        # Our own warpers, then the recorder; generate adds none of its own (T=1, top_p=1, top_k=0).
        processors = LogitsProcessorList()
        if not greedy and params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if not greedy and params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        processors.append(recorder)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=not greedy,
            temperature=1.0,
            top_p=1.0,
            top_k=None if greedy else 0,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            logits_processor=processors,
            pad_token_id=pad,
            eos_token_id=eos,
            stop_strings=list(params.stop) or None,
            tokenizer=self.tokenizer,
        )
        new_tokens = out[:, width:]  # [B * n, L]
        logprobs = recorder.result(new_tokens[:, -1])  # [B * n, L]
        completions = [
            self._completion(new_tokens[i], logprobs[i], eos, params.stop) for i in range(new_tokens.shape[0])
        ]
        return [completions[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _completion(self, tokens: torch.Tensor, logprobs: torch.Tensor, eos: int, stop: Sequence[str]) -> Completion:
        """Cut at the first end-of-sequence token or stop string; ``generate`` pads finished rows after it."""
        stops = (tokens == eos).nonzero()
        length = int(stops[0]) + 1 if len(stops) else len(tokens)
        finish: Literal["stop", "length"] = "stop" if len(stops) else "length"
        if stop:
            for end in range(1, length):
                if any(s in self.tokenizer.decode(tokens[:end].tolist()) for s in stop):
                    length, finish = end, "stop"
                    break
        ids = tokens[:length].tolist()
        return Completion(
            token_ids=tuple(ids),
            logprobs=tuple(logprobs[:length].tolist()),
            finish_reason=finish,
            policy_version=self.policy_version,
            text=str(self.tokenizer.decode(ids, skip_special_tokens=True)),
        )

    @torch.no_grad()
    def load_weights(self, version: int, buckets: Iterable[dict[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        missing = set(params)
        for bucket in buckets:
            for name, tensor in bucket.items():
                params[name].copy_(tensor)
                missing.discard(name)
        if missing:
            raise RuntimeError(f"weight sync to version {version} is incomplete: missing {sorted(missing)[:3]}...")
        self.base_weights.clear()  # these are the base weights the next adapter applies to
        self.policy_version = version

    @torch.no_grad()
    def load_adapter(self, version: int, adapter: dict[str, torch.Tensor], scale: float) -> None:
        """Each adapted weight becomes ``W + scale * B @ A`` from the base ``W`` kept at the first adapter, so an
        adapter replaces the last one instead of adding to it; every later adapter must adapt the same weights."""
        found = lora.pairs(adapter)
        params = dict(self.model.named_parameters())
        unknown = sorted(set(found) - set(params))
        if unknown or (self.base_weights and set(found) != set(self.base_weights)):
            raise RuntimeError(
                f"adapter for version {version} does not fit: weights {unknown[:3] or sorted(found)[:3]}... are not "
                "the model's or not the ones adapted before"
            )
        for name, (a, b) in found.items():
            base = self.base_weights.setdefault(name, params[name].detach().clone())
            params[name].copy_(lora.merged_weight(base, a, b, scale))
        self.policy_version = version

    def fingerprint(self) -> dict[str, float]:
        return models.fingerprint(self.model)
