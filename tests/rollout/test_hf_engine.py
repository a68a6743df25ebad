import pytest
import torch

from rlstack.algorithms import token_logprobs
from rlstack.data.chat import render_prompt
from rlstack.types import SamplingParams
from rollout.hf_engine import HFEngine

MODEL = "random:tiny"


@pytest.fixture(scope="module")
def engine():
    engine = HFEngine(MODEL, dtype=torch.float32, device="cpu", seed=0)
    engine.load_weights(0, [dict(engine.model.named_parameters())])
    return engine


@pytest.fixture(scope="module")
def prompts(engine):
    return [render_prompt(engine.tokenizer, [{"role": "user", "content": f"What is {i} + 1?"}]) for i in range(3)]


def test_engine_refuses_to_serve_before_the_first_sync(prompts):
    fresh = HFEngine(MODEL, dtype=torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="no weights"):
        fresh.generate(prompts, SamplingParams())


def test_generate_returns_n_completions_per_prompt_with_logprobs(engine, prompts):
    groups = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=6, seed=1))
    assert [len(g) for g in groups] == [4, 4, 4]
    for completion in (c for g in groups for c in g):
        assert 1 <= len(completion.token_ids) <= 6
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(lp <= 0.0 for lp in completion.logprobs)
        assert completion.policy_version == 0
        assert completion.finish_reason == ("length" if len(completion.token_ids) == 6 else "stop")


def test_logprobs_equal_a_fresh_forward_pass(engine, prompts):
    completion = engine.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=6, temperature=0.7, seed=2))[0][0]
    ids = torch.tensor([list(prompts[0]) + list(completion.token_ids)])
    with torch.no_grad():
        logits = engine.model(ids).logits[:, len(prompts[0]) - 1 : -1]
    expected = token_logprobs(logits, ids[:, len(prompts[0]) :], temperature=0.7)[0]
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_greedy_generation_is_deterministic(engine, prompts):
    params = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    assert engine.generate(prompts, params) == engine.generate(prompts, params)


def test_weight_push_changes_outputs_and_pushing_back_restores_them(engine, prompts):
    greedy = SamplingParams(n=1, max_new_tokens=6, temperature=0.0)
    original = {k: v.clone() for k, v in engine.model.named_parameters()}
    before = engine.generate(prompts, greedy)
    torch.manual_seed(1)
    engine.load_weights(1, [{k: torch.randn_like(v) for k, v in original.items()}])
    changed = engine.generate(prompts, greedy)
    engine.load_weights(2, [original])
    restored = engine.generate(prompts, greedy)
    assert [c.logprobs for g in changed for c in g] != [c.logprobs for g in before for c in g]
    assert [(c.token_ids, c.logprobs) for g in restored for c in g] == [
        (c.token_ids, c.logprobs) for g in before for c in g
    ]
    assert restored[0][0].policy_version == 2


def test_incomplete_weight_sync_is_refused(engine):
    partial = dict(list(engine.model.named_parameters())[:2])
    with pytest.raises(RuntimeError, match="incomplete"):
        engine.load_weights(9, [partial])
    assert engine.policy_version != 9
