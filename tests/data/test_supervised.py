import json
from pathlib import Path

import pytest

from rlstack import models
from rlstack.config import DataSection
from rlstack.data.supervised import load_preference_data, load_sft_data

TOKENIZER = models.load_tokenizer("random:tiny")
EOS = TOKENIZER.eos_token_id


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def trained_text(example) -> list[str]:
    """The decoded runs of tokens with mask 1."""
    runs, current = [], []
    for token, mask in zip(example.input_ids, example.loss_mask, strict=True):
        if mask:
            current.append(token)
        elif current:
            runs.append(TOKENIZER.decode(current))
            current = []
    return runs + ([TOKENIZER.decode(current)] if current else [])


def test_sft_reads_multi_turn_messages_and_instruction_rows(tmp_path):
    chat = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    alpaca = {"instruction": "Add the numbers.", "input": "3 and 4", "output": "7"}
    path = write_jsonl(tmp_path / "sft.jsonl", [chat, alpaca] * 5)
    data = load_sft_data(DataSection(path=path, shuffle=False, eval_fraction=0.2), TOKENIZER)
    assert len(data.train) == 8 and len(data.held_out) == 2 and data.held_out_prompts == []
    assert trained_text(data.held_out[0]) == ["Hello!<|im_end|>", "4<|im_end|>"]
    assert trained_text(data.held_out[1]) == ["7<|im_end|>"]
    assert "3 and 4" in TOKENIZER.decode(data.held_out[1].input_ids)


def test_an_sft_row_without_messages_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    with pytest.raises(ValueError, match=r"sft\.jsonl:1: messages hold no assistant turn"):
        load_sft_data(DataSection(path=path), TOKENIZER)
    path = write_jsonl(tmp_path / "other.jsonl", [{"text": "Hi"}])
    with pytest.raises(ValueError, match=r"other\.jsonl:1: missing key 'messages' \(or 'instruction'\)"):
        load_sft_data(DataSection(path=path), TOKENIZER)


def test_dpo_reads_text_and_conversational_pairs(tmp_path):
    text = {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    conversational = {
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "chosen": [{"role": "assistant", "content": "5"}],
        "rejected": [{"role": "assistant", "content": "6"}],
    }
    path = write_jsonl(tmp_path / "pairs.jsonl", [text, conversational] * 3)
    data = load_preference_data(DataSection(path=path, shuffle=False, eval_fraction=0.34), TOKENIZER)
    first, second = data.held_out
    assert TOKENIZER.decode(first.chosen_ids) == "4<|im_end|>" and TOKENIZER.decode(first.rejected_ids) == "5<|im_end|>"
    assert TOKENIZER.decode(first.prompt_ids).endswith("What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert TOKENIZER.decode(second.chosen_ids) == "5<|im_end|>"
    assert all(p.chosen_ids[-1] == p.rejected_ids[-1] == EOS for p in [*data.train, *data.held_out])


def test_a_pair_missing_rejected_names_file_line_and_key(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello"}])
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: missing key 'rejected'"):
        load_preference_data(DataSection(path=path), TOKENIZER)


def test_builtin_sets_use_worked_answers_and_wrong_rejected_answers():
    section = DataSection(num_eval=10)
    sft = load_sft_data(section, TOKENIZER)
    assert len(sft.held_out) == len(sft.held_out_prompts) == 10
    for example, prompt in zip(sft.held_out, sft.held_out_prompts, strict=True):
        assert trained_text(example) == [f"{prompt.fields['solution']}<|im_end|>"]
        assert prompt.fields["solution"].endswith(f"= {prompt.fields['answer']}")
    pairs = load_preference_data(section, TOKENIZER)
    for pair, prompt in zip(pairs.held_out, pairs.held_out_prompts, strict=True):
        assert TOKENIZER.decode(pair.chosen_ids) == f"{prompt.fields['solution']}<|im_end|>"
        rejected = TOKENIZER.decode(pair.rejected_ids).removesuffix("<|im_end|>").rstrip(".")
        wrong = int(rejected.split()[-1])
        assert wrong != prompt.fields["answer"] and abs(wrong - prompt.fields["answer"]) <= 3
