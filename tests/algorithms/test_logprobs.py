import math

import pytest
import torch

from rlstack.algorithms import at_temperature, chunked_token_logprobs, token_entropy, token_logprobs


def test_token_logprobs_golden_value():
    # logits (0, ln 3): softmax = (1/4, 3/4); token 1 has logprob ln 0.75
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_temperature_divides_logits():
    # logits (0, ln 9) at T=2 are (0, ln 3): the same 3/4
    logits = torch.tensor([[[0.0, math.log(9.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(math.log(0.75))


def test_entropy_of_uniform_logits_is_log_vocab():
    assert token_entropy(torch.zeros(1, 2, 8))[0].tolist() == pytest.approx([math.log(8)] * 2)


def test_temperature_one_keeps_the_logits_without_a_copy():
    logits = torch.randn(2, 3, 5)
    assert at_temperature(logits, 1.0) is logits
    assert torch.equal(at_temperature(logits, 2.0), logits / 2)


def test_chunked_logprobs_equal_the_whole_batchs_values_entropies_and_gradients():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=gen, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    targets = torch.randint(0, 50, (7,), generator=gen)
    weights = torch.randn(7, generator=gen)

    def run(score):
        hidden.grad, head.weight.grad = None, None
        logprobs, entropy = score()
        (logprobs * weights).sum().backward()
        return logprobs.detach(), entropy, hidden.grad.clone(), head.weight.grad.clone()

    logits = lambda: head(hidden)[None]  # noqa: E731  # [1, 7, V]
    whole = run(lambda: (token_logprobs(logits(), targets[None], 0.7)[0], token_entropy(logits() / 0.7)[0]))
    chunked = run(lambda: chunked_token_logprobs(hidden, head, targets, temperature=0.7, chunk_tokens=3))
    for got, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not chunked[1].requires_grad
