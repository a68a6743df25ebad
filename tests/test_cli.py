"""Bad input exits with code 2 and names the key or path, before any actor starts."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY = "recipes/grpo_tiny_random.yaml"


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlstack.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((TINY, "trainer.lrr=1"), "unknown key 'trainer.lrr'; did you mean 'trainer.lr'?"),
        ((TINY, "rollout.num_samples=eight"), "rollout.num_samples"),
        ((TINY, "model.path=/no/such/model"), "model.path='/no/such/model'"),
        ((TINY, "reward.functions=[no_such_pkg.rewards:score]"), "reward.functions.0.fn='no_such_pkg.rewards:score'"),
        ((TINY, "reward.functions=[tests/assets/rewards.py:missing]"), "has no function 'missing'"),
        ((TINY, "reward.functions=[exact_mach]"), "did you mean 'exact_match'?"),
        ((TINY, "reward.function=exact_match"), "unknown key 'reward.function'; did you mean 'reward.functions'?"),
        (("recipes/none.yaml",), "recipes/none.yaml"),
        ((TINY, "checkpoint.resume_from=/no/checkpoint"), "checkpoint.resume_from='/no/checkpoint' is not an rlstack"),
    ],
)
def test_bad_input_exits_2_naming_the_key(args, message):
    """Each one fails before Ray starts."""
    result = train(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_an_existing_run_is_never_appended_to(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken/metrics.jsonl").write_text("{}\n")
    result = train(TINY, f"tracking.run_root={tmp_path}", "tracking.name=taken")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr
    assert (tmp_path / "taken/metrics.jsonl").read_text() == "{}\n"


def test_data_that_cannot_train_exits_2_naming_file_and_key(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = train(TINY, f"data.path={empty}")
    assert result.returncode == 2 and "holds no rows" in result.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "What is 1 + 1?", "answer": 2}\n{"question": "What is 2 + 2?"}\n')
    result = train(TINY, f"data.path={rows}", "data.prompt_key=question")
    assert result.returncode == 2 and "rows.jsonl:2: missing key 'answer'" in result.stderr
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_data_inspect_shows_counts_lengths_a_prompt_and_the_reward_fields():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlstack.cli",
            "data",
            "inspect",
            "recipes/data/verl_arith/train.parquet",
            "--recipe",
            "recipes/grpo_verl_parquet_smollm2.yaml",
            "model.path=random:tiny",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rows: 1000 read, 1000 kept, 0 longer than data.max_prompt_tokens=1024" in result.stdout
    assert "prompt tokens: p50 " in result.stdout and "<|im_start|>user\nWhat is " in result.stdout
    assert "  answer = '" in result.stdout and "  data_source = 'synthetic/addition'" in result.stdout


def test_help_lists_each_bench_module_under_its_name_with_its_docstring_first_line():
    result = subprocess.run(
        [sys.executable, "-m", "rlstack.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert "  rlstack demo [--setup-seconds S]            the embedded GRPO recipe via ray job submit" in lines
    assert (
        "  rlstack bench gpu-grpo                      GRPO with the real SmolLM2 on one GPU, step time against TRL's"
        in lines
    )
    assert [line.split()[2] for line in lines if line.startswith("  rlstack bench ")] == [
        "demo", "async-grpo", "block-size", "dtype", "gemm", "gpu-grpo", "lmdeploy", "lora", "prompt-sharing",
        "reward", "rollout", "service", "sft", "sync", "tool-calc", "trainer", "trainer-profile",
    ]  # fmt: skip
