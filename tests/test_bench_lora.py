import json

import pytest

from rlstack.bench.lora import main

pytestmark = pytest.mark.e2e


def test_lora_bench_records_both_arms_and_the_adapter_is_a_small_share_of_a_sync(tmp_path, request, monkeypatch):
    monkeypatch.chdir(request.config.rootpath)  # the bench runs from the repo root, as make bench does
    output = tmp_path / "lora.json"
    tiny = ["model.path=random:tiny", "rollout.engine=hf", "rollout.dtype=float32", "rollout.num_prompts=2",
            "rollout.num_samples=2", "rollout.max_new_tokens=4", "eval.num_samples=1", "placement.num_threads=1",
            "algorithm.drop_zero_variance_groups=false"]  # fmt: skip
    args = ["--num-steps=1", "--num-eval=2", "--eval-every=0", f"--run-root={tmp_path}", f"--output={output}"]
    assert main([*args, *(f"--override={o}" for o in tiny)]) == 0
    record = json.loads(output.read_text())
    for arm in ("lora", "full"):
        assert record[f"{arm}_steps"] == 1 and record[f"{arm}_median_step_s"] > 0
        assert record[f"{arm}_trainer_peak_rss_gib"] > 0
    # random:tiny: 2 layers x 7 adapted linear layers at rank 16, against all of its weights, in float32
    assert 0 < record["lora_sync_bytes_adapter"] < record["lora_sync_bytes_merged"] == record["full_sync_bytes_merged"]
    assert "full_sync_bytes_adapter" not in record
