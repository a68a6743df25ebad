import json
import sys
from pathlib import Path

import pytest

from rlstack.bench import result
from rlstack.bench.result import record_result

BENCH_DIR = Path(result.__file__).resolve().parent


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["/venv/bin/rlstack", "bench", "gemm", "--repeats", "5"], "rlstack bench gemm --repeats 5"),
        (
            [str(BENCH_DIR.parent / "cli.py"), "bench", "demo", "--setup-seconds", "40"],
            "rlstack bench demo --setup-seconds 40",
        ),
        ([str(BENCH_DIR / "prompt_sharing.py"), "--device", "cuda"], "rlstack bench prompt-sharing --device cuda"),
        (["/venv/bin/rlstack", "bench", "rollout", "--set", "a=b c"], "rlstack bench rollout --set 'a=b c'"),
    ],
)
def test_a_result_records_the_command_line_that_ran_the_bench(argv, command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", argv)
    record_result("gemm", {"speedup": 1.5}, {"faster": True}, tmp_path / "gemm.json")
    record = json.loads((tmp_path / "gemm.json").read_text())
    assert list(record) == ["bench", "date", "machine", "command", "speedup", "targets_met"]
    assert record["command"] == command
    assert json.loads(capsys.readouterr().out) == record
