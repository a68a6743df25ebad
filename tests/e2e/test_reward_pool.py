"""The reward pool on a real local Ray: weighted sums, dead actors, fail-fast, a model-based reward."""

import pytest
import torch
from transformers import LlamaForSequenceClassification

from actors.reward import RewardError, RewardPool, ScoreRequest
from rlstack import models
from rlstack.config import PlacementSection, RewardSection

pytestmark = pytest.mark.e2e
ASSETS = "tests/assets/rewards.py"


def pool(functions: list, num_workers: int = 2, **section) -> RewardPool:
    return RewardPool(
        RewardSection(functions=functions, timeout_s=2.0, **section),
        PlacementSection(num_reward_workers=num_workers, reward_cpus=0.1),
    )


def requests(*texts: str) -> list[ScoreRequest]:
    return [ScoreRequest(t, "What is 2 + 2?", {"answer": 4}, len(t), "stop") for t in texts]


def test_total_is_the_weighted_sum_and_each_reward_is_logged(ray_cluster):
    rewards = pool(["exact_match", {"fn": f"{ASSETS}:with_extras", "name": "fmt", "weight": 0.5}])
    scores = rewards.score(requests("4", "5", "4", "x"))
    assert scores.rewards == [1.5, 0.5, 1.5, 0.5]
    assert scores.by_function == {"exact_match": [1.0, 0.0, 1.0, 0.0], "fmt": [1.0, 1.0, 1.0, 1.0]}
    assert scores.metrics["reward/exact_match/mean"] == 0.5
    assert scores.metrics["reward/fmt/chars"] == 1.0
    assert scores.metrics["reward/fmt/errors"] == 0
    rewards.shutdown()


def test_an_actor_that_kills_itself_costs_its_samples_and_is_restarted(ray_cluster):
    rewards = pool([f"{ASSETS}:kills_its_process"], num_workers=1)
    scores = rewards.score(requests("die", "fine"))
    assert scores.rewards == [0.0, 0.0]
    assert scores.metrics["reward/kills_its_process/errors"] == 2
    assert rewards.score(requests("fine", "also fine")).rewards == [1.0, 1.0]  # the restarted actor serves again
    rewards.shutdown()


def test_fail_fast_stops_with_the_traceback(ray_cluster):
    rewards = pool([f"{ASSETS}:raises"], fail_fast=True)
    with pytest.raises(RewardError, match="reward bug"):
        rewards.score(requests("4"))
    rewards.shutdown()


def test_model_based_reward_runs_batched_in_its_own_actor(ray_cluster, tmp_path):
    config = models.random_config("tiny", vocab_size=len(models.load_tokenizer("random:tiny")))
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    models.load_tokenizer("random:tiny").save_pretrained(tmp_path / "rm")
    spec = {"fn": "sequence_classifier", "kwargs": {"model_path": str(tmp_path / "rm"), "batch_size": 2}}
    rewards = pool(["exact_match", {**spec, "dedicated": True, "num_cpus": 0.1, "name": "rm"}])
    assert len(rewards.groups) == 2 and len(rewards.groups[1][1]) == 1
    scores = rewards.score(requests("4", "a longer answer", "4"))
    rm = scores.by_function["rm"]
    assert scores.metrics["reward/rm/errors"] == 0
    assert rm[0] == pytest.approx(rm[2]) and rm[0] != rm[1]
    assert scores.rewards == pytest.approx([1.0 + rm[0], rm[1], 1.0 + rm[2]])
    rewards.shutdown()
