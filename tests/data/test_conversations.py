from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

import rlstack
from rlstack.data.conversations import instruction_to_messages, tokenize_conversation

TOKENIZER_PATH = Path(rlstack.__file__).parent / "assets" / "smollm2-tokenizer"

CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TOKENIZER_PATH)


def test_only_assistant_content_and_end_of_turn_are_trained(tokenizer):
    # SmolLM2 renders (one token per piece, "<s>" = <|im_start|>, "</s>" = <|im_end|>):
    #   0-20   "<s>" "system" "\n" + 16 tokens "You are ... Hugging Face" + "</s>" "\n"  (default system prompt)
    #   21-26  "<s>" "user" "\n" "Hi" "</s>" "\n"
    #   27-30  "<s>" "ass" "istant" "\n"
    #   31-34  "Hello" "!" "</s>" "\n"           -> 31, 32, 33 trained; the newline after </s> is not
    #   35-43  "<s>" "user" "\n" "2" "+" "2" "?" "</s>" "\n"
    #   44-47  "<s>" "ass" "istant" "\n"
    #   48-50  "4" "</s>" "\n"                   -> 48, 49 trained
    example = tokenize_conversation(tokenizer, CHAT)
    full = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert list(example.input_ids) == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert [i for i, m in enumerate(example.loss_mask) if m] == [31, 32, 33, 48, 49]
    assert tokenizer.decode(example.input_ids[31:34]) == "Hello!<|im_end|>"
    assert tokenizer.decode(example.input_ids[48:50]) == "4<|im_end|>"


def test_template_that_rewrites_earlier_turns_is_rejected():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_PATH)
    # the turn count up front changes every time a message is added
    tokenizer.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m.role }}:\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_conversation(tokenizer, CHAT)


def test_assistant_turn_without_end_of_turn_token_is_rejected():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_PATH)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}:\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    with pytest.raises(ValueError, match="assistant message 1 renders without the end-of-turn token"):
        tokenize_conversation(tokenizer, CHAT)


def test_instruction_with_input_joins_them_after_a_blank_line():
    row = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert instruction_to_messages(row) == [
        {"role": "user", "content": "Translate to French.\n\ncat"},
        {"role": "assistant", "content": "chat"},
    ]


@pytest.mark.parametrize(
    "row", [{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say hi.", "input": "", "output": "hi"}]
)
def test_instruction_without_input_is_the_whole_prompt(row):
    assert instruction_to_messages(row)[0] == {"role": "user", "content": "Say hi."}


def test_instruction_row_without_output_names_the_missing_key():
    with pytest.raises(ValueError, match=r"lacks \['output'\]"):
        instruction_to_messages({"instruction": "Say hi."})
