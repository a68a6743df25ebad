"""A trajectory's reward: the reward functions' scores of its answer plus its environment's, or error_score."""

from actors.environment import with_environment
from actors.reward import Scores
from rlstack.types import Completion
from rollout.multi_turn import Trajectory


def trajectory(env_reward=None, error=None, mask=(1, 0, 1)) -> Trajectory:
    completion = Completion((1, 2, 3), (-1.0, 0.0, -1.0), "stop", 0, "", model_mask=mask)
    return Trajectory((9,), completion, "42", num_turns=2, env_reward=env_reward, error=error, info={"tool_calls": 1})


def test_the_environments_reward_adds_to_the_functions_and_a_failure_scores_error_score():
    groups = [[trajectory(env_reward=0.5), trajectory()], [trajectory(error="timeout"), trajectory(env_reward=-2.0)]]
    scores = Scores([1.0, 1.0, 1.0, 0.0], {"exact_match": [1.0, 1.0, 1.0, 0.0]}, {"reward/exact_match/mean": 0.75}, 0)
    combined = with_environment(scores, groups, error_score=-1.0)
    assert combined.rewards == [1.5, 1.0, -1.0, -2.0]
    assert combined.by_function == {"exact_match": [1.0, 1.0, -1.0, 0.0]}  # a failed trajectory is not correct
    assert combined.num_errors == 1
    assert combined.metrics["reward/exact_match/mean"] == 0.75
    assert combined.metrics["env/errors"] == 1.0 == combined.metrics["env/errors/timeout"]
    assert combined.metrics["trajectory/turns"] == 2.0
    assert combined.metrics["trajectory/model_tokens"] == 2.0 and combined.metrics["trajectory/env_tokens"] == 1.0
    assert combined.metrics["env/tool_calls"] == 1.0
