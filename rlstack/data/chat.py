"""Prompts through the model's chat template."""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from rlstack.data.prompts import Message


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], system_prompt: str | None = None
) -> list[int]:
    """Token ids of a chat, ending with the assistant's generation prompt.

    ``system_prompt`` is put first unless the chat opens with a system message of its own.
    """
    chat = list(messages)
    if system_prompt is not None and (not chat or chat[0]["role"] != "system"):
        chat.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
