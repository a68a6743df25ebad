import torch

from rlstack import models
from rlstack.algorithms import token_logprobs
from rlstack.data.batching import collate, padding_sample
from rlstack.data.shared_prompt import collate_shared_prompt, shared_prompt_rows, tree_size, trees
from rlstack.forward import add_response_scoring, padded_response_logits, shared_prompt_scores
from rlstack.types import Completion, Sample


def sample(prompt: tuple[int, ...], response: tuple[int, ...], advantage: float = 1.0) -> Sample:
    completion = Completion(response, tuple(-0.1 * (i + 1) for i in range(len(response))), "stop", 0, "")
    return Sample(prompt, completion, advantage)


def test_row_layout_positions_mask_and_logit_positions():
    # tree 0: prompt (1, 2) with responses (5, 6) and (7); tree 1: prompt (3) with response (8, 9)
    row = [[sample((1, 2), (5, 6)), sample((1, 2), (7,), -1.0)], [sample((3,), (8, 9))]]
    data = collate_shared_prompt(row, pad_id=0)
    assert data.input_ids.tolist() == [[1, 2, 5, 6, 7, 3, 8, 9]]
    assert data.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]
    assert data.attention_mask().shape == (1, 1, 8, 8)
    assert data.attention_mask()[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],  # prompt 0
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],  # response (5, 6) sees prompt 0 and itself
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # response (7) sees prompt 0, not (5, 6)
        [0, 0, 0, 0, 0, 1, 0, 0],  # prompt 1 sees nothing of tree 0
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ]
    # the last prompt token predicts every response's first token
    assert data.logit_positions.tolist() == [1, 2, 1, 5, 6]
    assert data.token_ids.tolist() == [5, 6, 7, 8, 9]
    assert data.response_ids.tolist() == [[5, 6], [7, 0], [8, 9]]
    assert data.response_mask.tolist() == [[1, 1], [1, 0], [1, 1]]
    assert data.advantages.tolist() == [1.0, -1.0, 1.0]
    assert data.scatter(torch.arange(1.0, 6.0)).tolist() == [[1, 2], [3, 0], [4, 5]]


def test_trees_group_by_prompt_and_respect_the_budget():
    a, b = (1, 2, 3), (4, 5)
    samples = [sample(a, (9,) * 4), sample(b, (9,) * 2), sample(a, (9,) * 4), sample(a, (9,) * 4)]
    # prompt a: 3 + 4 + 4 = 11 fits 12, a third response would make 15: cut
    assert [[s.prompt_ids for s in t] for t in trees(samples, max_tokens=12)] == [[a, a], [a], [b]]
    rows = shared_prompt_rows(samples, max_tokens=12)
    assert sorted(sum(tree_size(t) for t in r) for r in rows) == [11, 11]  # (b: 4) + (a: 7) and (a, a: 11)
    assert sorted(len(s.completion.token_ids) for r in rows for t in r for s in t) == [2, 4, 4, 4]


def test_a_tree_over_the_budget_gets_a_row_of_its_own():
    rows = shared_prompt_rows([sample((1,) * 5, (9,) * 10), sample((2,), (9,))], max_tokens=8)
    assert [[tree_size(t) for t in r] for r in rows] == [[2], [15]]


def tokens(gen: torch.Generator, n: int) -> tuple[int, ...]:
    return tuple(torch.randint(1, 64, (n,), generator=gen).tolist())


def two_prompts_samples() -> list[Sample]:
    """Two prompts' groups of responses of 1 to 6 tokens, and a padding sample."""
    gen = torch.Generator().manual_seed(1)
    p, q = tokens(gen, 5), tokens(gen, 3)
    samples = [sample(p, tokens(gen, n), float(n) - 3) for n in (4, 1, 6)]
    samples += [sample(q, tokens(gen, n), 1.5) for n in (2, 5)]
    return [*samples, padding_sample(samples[0])]


def padded_and_shared_logprobs(
    model: torch.nn.Module, attention: str, device: str = "cpu"
) -> tuple[tuple[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]:
    """``((logprobs, grads) of the padded layout under SDPA, (the same) of one shared-prompt row under
    ``attention`` with its tokens scored two at a time, the response mask)``, rows in the shared order; grads
    are empty where backward does not run (``torch.is_grad_enabled()`` false)."""
    samples = two_prompts_samples()

    def loss_and_grads(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor):
        if not torch.is_grad_enabled():
            return logprobs, {}
        model.zero_grad()
        (-(logprobs * mask.to(device) * advantages.to(device).unsqueeze(-1)).sum()).backward()
        return logprobs.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    padded = collate(samples, pad_id=0)
    model.set_attn_implementation("sdpa")
    logits = padded_response_logits(model, padded, torch.device(device))
    expected = loss_and_grads(
        token_logprobs(logits, padded.response_ids.to(device)), padded.response_mask, padded.advantages
    )

    [row] = shared_prompt_rows(samples, max_tokens=64)
    assert len(row) == 2  # both prompts' trees in one row
    shared = collate_shared_prompt(row, pad_id=0)
    assert shared.input_ids.numel() == 5 + 11 + 3 + 7 + 1  # each prompt once (the padding sample shares p)
    model.set_attn_implementation(models.ATTENTION_IMPLEMENTATIONS[attention])
    add_response_scoring(model, chunk_tokens=2)
    mask = shared.attention_mask(device, attention)
    scores, _ = shared_prompt_scores(model, shared, torch.device(device), mask, 1.0)
    got = loss_and_grads(shared.scatter(scores), shared.response_mask, shared.advantages)
    model.set_attn_implementation("sdpa")

    order = [samples.index(s) for t in row for s in t]  # rows keep tree order
    return (expected[0][order], expected[1]), got, padded.response_mask[order].bool().to(device)


def test_shared_prompt_rows_give_the_padded_layouts_logprobs_and_gradients(tiny_llama):
    (expected, expected_grads), (got, grads), mask = padded_and_shared_logprobs(tiny_llama, "sdpa")
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
    assert expected_grads.keys() == grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_flex_attention_rows_give_the_padded_layouts_logprobs(tiny_llama):
    """FlexAttention has no backward on the CPU; its gradients are checked on the GPU (tests/gpu)."""
    with torch.no_grad():
        (expected, _), (got, _), mask = padded_and_shared_logprobs(tiny_llama, "flex")
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)
