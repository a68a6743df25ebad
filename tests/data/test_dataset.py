import json
import tracemalloc
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlstack import models
from rlstack.config import DataSection
from rlstack.data.chat import render_prompt
from rlstack.data.dataset import load_prompt_data
from rlstack.data.examples import gsm8k_rows, verl_rows
from rlstack.data.prompts import EpochSampler

ROOT = Path(__file__).parents[2]
TOKENIZER = models.load_tokenizer("random:tiny")
ROWS = [{"question": f"What is {i} + 1?", "answer": i + 1, "source": "toy", "meta": {"id": i}} for i in range(40)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(path: Path, **data) -> object:
    section = DataSection(path=str(path), prompt_key="question", shuffle=False, eval_fraction=0.1, **data)
    return load_prompt_data(section, TOKENIZER)


def everything(prompts) -> list:
    return [(p.messages, p.fields) for p in prompts]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "save_to_disk", "dataset_dict"])
def test_each_format_round_trips_the_same_prompts_and_fields(tmp_path, kind):
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    elif kind == "parquet":
        path = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif kind == "save_to_disk":
        path = tmp_path / "rows"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    else:
        path = tmp_path / "dict"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(path))
    data = load(path)
    assert len(data.held_out) == 4 and len(data.train) == 36
    assert everything(data.held_out) + everything(data.train[i] for i in range(36)) == [
        (({"role": "user", "content": r["question"]},), {"answer": r["answer"], "source": "toy", "meta": r["meta"]})
        for r in ROWS
    ]


def test_nested_answer_key_and_chat_prompts_map_like_verl(tmp_path):
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows(10, seed=0, split="train")), path)
    section = DataSection(path=str(path), answer_key="reward_model.ground_truth", eval_fraction=0.1)
    prompt = load_prompt_data(section, TOKENIZER).train[0]
    assert prompt.messages[0]["role"] == "user" and prompt.question.startswith("What is ")
    a, b = (int(x) for x in prompt.question.removeprefix("What is ").split("?")[0].split(" + "))
    assert prompt.fields["answer"] == str(a + b) == prompt.fields["reward_model"]["ground_truth"]
    assert set(prompt.fields) == {"answer", "data_source", "ability", "reward_model", "extra_info"}


def test_prompt_template_fills_fields_and_system_prompt_is_rendered(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    data = load(path, prompt_template="Q{meta[id]}: {question} Reply briefly.", system_prompt="Be exact.")
    prompt = data.held_out[0]
    assert prompt.question == "Q0: What is 0 + 1? Reply briefly."
    assert "question" not in prompt.fields  # the prompt key is not a reward field
    rendered = TOKENIZER.decode(render_prompt(TOKENIZER, prompt.messages, "Be exact."))
    assert rendered.index("Be exact.") < rendered.index("Q0: What is 0 + 1?")


def test_a_missing_key_names_the_file_line_and_key(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [*ROWS[:3], {"question": "What is 1?"}])
    with pytest.raises(ValueError, match=r"rows\.jsonl:4: missing key 'answer'"):
        load(path)
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: missing key 'query'"):
        load(path, prompt_template="{query}")


def test_a_malformed_line_fails_with_its_line_number_or_is_skipped_and_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps(r) for r in ROWS[:20]]
    lines[6] = '{"question": "What is'
    lines[9] = "[1, 2]"
    path.write_text("\n".join(lines) + "\n\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:7: malformed JSON"):
        load(path)
    data = load(path, skip_malformed=True)
    assert data.reports[0].skipped == {"malformed JSON": 1, "not a JSON object": 1}
    assert len(data.train) + len(data.held_out) == 18
    assert data.metrics()["data/num_malformed"] == 2


def test_prompts_over_the_token_budget_are_counted_and_left_out(tmp_path):
    rows = [*ROWS[:10], {"question": "word " * 300, "answer": 0}]
    data = load(write_jsonl(tmp_path / "rows.jsonl", rows), max_prompt_tokens=64)
    assert data.reports[0].num_too_long == 1 and data.metrics()["data/num_too_long"] == 1
    assert len(data.train) + len(data.held_out) == 10


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("", "holds no rows"),
        ("\n\n", "holds no rows"),
        (json.dumps({"question": "word " * 300, "answer": 1}) + "\n", "longer than data.max_prompt_tokens=64"),
    ],
)
def test_an_empty_or_fully_filtered_file_is_an_error_before_training(tmp_path, lines, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(lines)
    with pytest.raises(ValueError, match=message):
        load(path, max_prompt_tokens=64)


def test_a_file_of_only_malformed_rows_is_an_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("not json\n{also not\n")
    with pytest.raises(ValueError, match="every row .* is malformed"):
        load(path, skip_malformed=True)


def test_unknown_paths_and_kinds_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.path: .*does not exist"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a .jsonl file, a .parquet file"):
        load(tmp_path / "rows.csv")


def test_eval_path_eval_split_and_max_rows(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[:5])
    data = load(train, eval_path=str(test), max_rows=30)
    assert len(data.train) == 30 and [p.fields["answer"] for p in data.held_out] == [1, 2, 3, 4, 5]
    both = tmp_path / "both"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:30]), "test": datasets.Dataset.from_list(ROWS[30:])}
    ).save_to_disk(str(both))
    data = load(both, eval_split="test", num_eval=6)
    assert len(data.train) == 30 and [p.fields["answer"] for p in data.held_out] == [31, 32, 33, 34, 35, 36]
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\], not 'valid'"):
        load(both, eval_split="valid")


def test_shuffled_order_is_deterministic_for_a_seed(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    section = DataSection(path=str(path), prompt_key="question", seed=3)
    first, again = (load_prompt_data(section, TOKENIZER) for _ in range(2))
    other = load_prompt_data(section.model_copy(update={"seed": 4}), TOKENIZER)
    assert everything(first.held_out) == everything(again.held_out) != everything(other.held_out)
    assert everything(EpochSampler(first.train, 3).next_batch(20)) == everything(
        EpochSampler(again.train, 3).next_batch(20)
    )


def test_a_resumed_sampler_continues_with_the_next_unseen_prompt(tmp_path):
    data = load(write_jsonl(tmp_path / "rows.jsonl", ROWS))
    straight = EpochSampler(data.train, seed=5)
    straight.next_batch(50)  # past the end of the first epoch of 36
    state = json.loads(json.dumps(straight.state()))  # through a checkpoint file
    resumed = EpochSampler(data.train, seed=5)
    resumed.load_state(state)
    assert everything(resumed.next_batch(40)) == everything(straight.next_batch(40))


def test_a_large_file_is_not_held_in_memory(tmp_path):
    """Loading keeps row offsets, not rows: peak Python allocation stays a small share of the file."""
    padding = "x" * 10_000
    path = tmp_path / "big.jsonl"
    with path.open("w") as file:
        for i in range(2000):
            file.write(json.dumps({"question": f"What is {i}?", "answer": i, "context": padding}) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    data = load(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert size > 20e6 and peak < 0.1 * size, (size, peak)
    assert data.train[100].fields["context"] == padding


def test_the_shipped_examples_are_what_the_generator_writes():
    lines = (ROOT / "recipes/data/gsm8k_synth/train.jsonl").read_text().splitlines()
    test = (ROOT / "recipes/data/gsm8k_synth/test.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines + test] == gsm8k_rows(2200, seed=0)
    assert pq.read_table(ROOT / "recipes/data/verl_arith/train.parquet").to_pylist() == verl_rows(1000, 1, "train")
    assert pq.read_table(ROOT / "recipes/data/verl_arith/test.parquet").to_pylist() == verl_rows(100, 2, "test")
    assert not {json.loads(line)["question"] for line in lines} & {json.loads(line)["question"] for line in test}


def test_gsm8k_answers_end_in_the_worked_result():
    for row in gsm8k_rows(50, seed=1):
        *steps, final = row["answer"].splitlines()
        result = int(final.removeprefix("#### "))
        assert steps[-1].split(">>")[1].startswith(str(result))
