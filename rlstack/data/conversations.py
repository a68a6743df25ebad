"""Chats to SFT examples through the tokenizer's chat template.

Only what the model must learn to write counts: each assistant turn's content and its
end-of-turn token (the tokenizer's ``eos_token``). System, user and template text, the
assistant header, and template text after the end-of-turn token (a newline in ChatML)
get mask 0.

Assistant spans are found by rendering prefixes of the chat: the turn starts where the
rendering of the messages before it with ``add_generation_prompt=True`` ends, and ends
where the rendering that includes it ends. This needs a template whose rendering of a
prefix tokenizes to a prefix of the whole chat's tokens; templates that rewrite earlier
turns (e.g. dropping past reasoning) are rejected with a ``ValueError``.
"""

from collections.abc import Mapping

from transformers import PreTrainedTokenizerBase

from rlstack.types import SFTExample


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> SFTExample:
    """Token ids of the rendered chat and a mask that is 1 on assistant turns.

    Args:
        tokenizer: with a chat template and an ``eos_token`` that ends assistant turns.
        messages: OpenAI format, ``[{"role": ..., "content": ...}, ...]``.
    """
    full = _render(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_prefix_tokens(tokenizer, messages[:i], full, add_generation_prompt=True))
        end = len(_prefix_tokens(tokenizer, messages[: i + 1], full, add_generation_prompt=False))
        turn = full[start:end]
        if tokenizer.eos_token_id not in turn:
            raise ValueError(f"assistant message {i} renders without the end-of-turn token {tokenizer.eos_token!r}")
        end = start + len(turn) - turn[::-1].index(tokenizer.eos_token_id)  # just past the last eos
        mask[start:end] = [1] * (end - start)
    return SFTExample(input_ids=tuple(full), loss_mask=tuple(mask))


def instruction_to_messages(row: Mapping[str, str]) -> list[dict[str, str]]:
    """An Alpaca-style ``{"instruction", "input", "output"}`` row as a two-turn chat.

    A non-empty ``input`` follows the instruction after a blank line; it may be absent.
    """
    missing = sorted({"instruction", "output"} - row.keys())
    if missing:
        raise ValueError(f"instruction row lacks {missing}; it has {sorted(row)}")
    prompt = row["instruction"]
    if row.get("input"):
        prompt = f"{prompt}\n\n{row['input']}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool
) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prefix_tokens(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], full: list[int], add_generation_prompt: bool
) -> list[int]:
    ids = _render(tokenizer, messages, add_generation_prompt)
    if full[: len(ids)] != ids:
        raise ValueError(
            f"chat template is not prefix-stable: the first {len(messages)} messages "
            f"(add_generation_prompt={add_generation_prompt}) do not tokenize to a prefix of the whole chat"
        )
    return ids
