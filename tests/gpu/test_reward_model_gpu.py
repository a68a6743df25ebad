"""The model-based reward in a dedicated GPU actor scores as it does on the CPU."""

import pytest
import ray
import torch
from transformers import LlamaForSequenceClassification

from actors.reward import RewardPool, ScoreRequest
from reward.model import SequenceClassifierReward
from rlstack import models
from rlstack.config import PlacementSection, RewardSection

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


def test_sequence_classifier_on_a_gpu_actor_matches_the_cpu(tmp_path):
    config = models.random_config("smollm2-135m", vocab_size=len(models.load_tokenizer("random:tiny")))
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    models.load_tokenizer("random:tiny").save_pretrained(tmp_path / "rm")
    texts = ["4", "The answer is 4.", "I do not know", "4"]
    on_cpu = SequenceClassifierReward(str(tmp_path / "rm"))(texts, prompts=["What is 2 + 2?"] * 4, rows=[{}] * 4)

    ray.init(include_dashboard=False)
    try:
        spec = {"fn": "sequence_classifier", "kwargs": {"model_path": str(tmp_path / "rm"), "device": "cuda"}}
        section = RewardSection(functions=[{**spec, "dedicated": True, "num_gpus": 1, "name": "rm"}])
        pool = RewardPool(section, PlacementSection())
        scores = pool.score([ScoreRequest(t, "What is 2 + 2?", {}) for t in texts])
        pool.shutdown()
    finally:
        ray.shutdown()
    assert scores.metrics["reward/rm/errors"] == 0
    assert scores.by_function["rm"] == pytest.approx(on_cpu, abs=1e-3)
    assert scores.by_function["rm"][0] == pytest.approx(scores.by_function["rm"][3])
