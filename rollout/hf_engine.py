"""HF transformers ``generate`` as a rollout engine: slow, exact, always available."""

from collections.abc import Iterable, Sequence
from typing import Literal

import torch

from rlstack import models
from rlstack.algorithms import token_logprobs
from rlstack.types import Completion, SamplingParams

MAX_SEQUENCES_PER_CALL = 128
"""Sequences per ``generate`` call; bounds the ``[B, T, V]`` logits kept for logprobs."""


class HFEngine:
    """Batched sampling with ``model.generate``; logprobs come from the raw logits.

    Logprobs are ``log softmax(logits / temperature)`` of each sampled token, the
    distribution that was sampled when ``top_p == 1``. With ``top_p < 1`` they ignore
    the nucleus truncation.
    """

    def __init__(self, model_path: str, dtype: torch.dtype, device: str, seed: int = 0):
        self.tokenizer = models.load_tokenizer(model_path)
        self.model = models.load_model(model_path, dtype=dtype, seed=seed).to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self.policy_version = -1

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
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        new_tokens = out.sequences[:, width:]  # [B * n, L]
        logits = torch.stack(out.logits, dim=1)  # [B * n, L, V]
        logprobs = token_logprobs(logits, new_tokens, temperature=1.0 if greedy else params.temperature)
        completions = [self._completion(new_tokens[i], logprobs[i], eos) for i in range(new_tokens.shape[0])]
        return [completions[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def _completion(self, tokens: torch.Tensor, logprobs: torch.Tensor, eos: int) -> Completion:
        stops = (tokens == eos).nonzero()
        length = int(stops[0]) + 1 if len(stops) else len(tokens)
        finish: Literal["stop", "length"] = "stop" if len(stops) else "length"
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
        self.policy_version = version

    def fingerprint(self) -> dict[str, float]:
        return models.fingerprint(self.model)
