"""Multi-turn GRPO with tools on a real local Ray: the tiny tool recipe through every part, and environment
actors whose tool hangs or kills the process."""

import json
import time
from pathlib import Path

import pytest

from actors.environment import EnvironmentPool
from rlstack.config import EnvironmentSection, load_recipe
from rlstack.controller import GRPOController
from tests.engines import fingerprints, policy_versions

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
RECIPE = ROOT / "recipes" / "grpo_tool_tiny_random.yaml"
ENVS = ROOT / "tests" / "assets" / "environments.py"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_grpo_steps_over_calculator_trajectories(ray_cluster, tmp_path):
    reward = f"reward.functions=[exact_match, {ROOT}/tests/assets/rewards.py:distinct_characters]"  # rewards differ
    recipe = load_recipe(RECIPE, [f"tracking.run_root={tmp_path}", "tracking.name=run", reward])
    with GRPOController(recipe, tmp_path / "run") as controller:
        summary = controller.run()
        trainer_weights = controller.trainer.fingerprint()
        engine_weights = fingerprints(controller.rollout)[0]
        versions = policy_versions(controller.rollout)
    assert engine_weights == trainer_weights
    assert versions == [2] == [summary["policy_version"]]
    steps = [r for r in records(tmp_path / "run") if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("trajectory/turns", "trajectory/model_tokens", "trajectory/env_tokens", "env/tool_calls",
                "env/tool_errors", "env/errors", "grad_norm", "kl", "entropy"):  # fmt: skip
        assert all(key in r for r in steps), key
    assert steps[0]["trajectory/turns"] > 1 and steps[0]["trajectory/env_tokens"] > 0  # the tool answered
    assert steps[0]["env/errors"] == 0
    assert steps[0]["grad_norm"] > 0
    assert "eval/greedy_accuracy" in records(tmp_path / "run")[0]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any("<|im_start|>tool" in s["completion"] for s in samples)
    assert len(json.loads((tmp_path / "run" / "placement.json").read_text())["environment"]) == 1


def test_the_pool_times_out_a_hung_tool_and_restarts_an_actor_a_tool_killed(ray_cluster):
    rows = [{"prompt": "p", "messages": [{"role": "user", "content": "p"}]}] * 4
    chats = [[{"role": "assistant", "content": "x"}]] * 4
    hangs = EnvironmentPool(EnvironmentSection(fn=f"{ENVS}:Hangs", timeout_s=1.0, num_workers=1))
    try:
        assert all(o.error is None for o in hangs.reset([0, 1, 2, 3], rows))
        start = time.monotonic()
        assert [o.error for o in hangs.step([0, 1, 2, 3], chats, ["x"] * 4)] == ["timeout"] * 4
        assert time.monotonic() - start < 10
    finally:
        hangs.shutdown()
    exits = EnvironmentPool(EnvironmentSection(fn=f"{ENVS}:Exits", timeout_s=1.0, num_workers=2))
    try:
        assert all(o.error is None for o in exits.reset([0, 1, 2, 3], rows))
        outcomes = exits.step([0, 1, 2, 3], chats, ["x"] * 4)
        assert [o.error for o in outcomes] == ["actor_died"] * 4
        assert all(o.error is None for o in exits.reset([4, 5], rows[:2]))  # the actors were restarted
    finally:
        exits.shutdown()
