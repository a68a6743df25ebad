"""The trainer's GPU kernels give the padded layout's logprobs and gradients: FlexAttention over shared-prompt
rows (whose backward runs on a GPU only) and the chunked scoring of the sampled tokens."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.data.test_shared_prompt import padded_and_shared_logprobs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_shared_prompt_rows_on_the_gpu_give_the_padded_layouts_logprobs_and_gradients(attention):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).cuda().eval()
    (expected, expected_grads), (got, grads), mask = padded_and_shared_logprobs(model, attention, "cuda")
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=0)
    assert expected_grads.keys() == grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)
