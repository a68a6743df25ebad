"""The queues between the controller's loops, the staleness bound, and the recipe keys that set them."""

import threading
import time

import pytest
import torch

from actors.reward import Scores
from rlstack.config import RecipeError, load_recipe
from rlstack.controller import GRPOController, concat
from rlstack.pipeline import Channel, Closed, staleness, within_bound

TINY = "recipes/grpo_tiny_random.yaml"


def test_a_channel_hands_items_over_in_order_and_says_how_long_the_reader_waited():
    channel: Channel[int] = Channel("scored groups", 2)
    threading.Timer(0.2, channel.put, (7,)).start()
    item, waited = channel.get(5, "step 1")
    assert item == 7 and waited >= 0.15
    channel.put(8)
    channel.put(9)
    assert [channel.get(1, "x")[0], channel.get(1, "x")[0]] == [8, 9]


def test_a_full_channel_holds_the_writer_until_the_reader_takes_one():
    channel: Channel[int] = Channel("requested steps", 1)
    channel.put(1)
    threading.Timer(0.2, channel.get, (1, "reader")).start()
    assert channel.put(2) >= 0.15
    assert channel.snapshot() == [2]


def test_a_reader_gets_the_error_its_writer_closed_the_channel_with():
    channel: Channel[int] = Channel("scored groups", 1)
    channel.close(RuntimeError("rollout worker 0 died during generate"))
    with pytest.raises(RuntimeError, match="rollout worker 0 died during generate"):
        channel.get(1, "step 3")
    with pytest.raises(RuntimeError, match="rollout worker 0 died"):
        channel.wait_put(1, 1, "step 3's sync")


def test_a_closed_channel_ends_its_writer_and_its_reader():
    channel: Channel[int] = Channel("requested steps", 1)
    channel.close()
    with pytest.raises(Closed):
        channel.get(None, "the rollout loop")
    with pytest.raises(Closed):
        channel.put(1)


def test_a_stalled_writer_fails_the_reader_within_its_deadline_naming_what_it_waited_for():
    channel: Channel[int] = Channel("scored groups", 1)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="step 4's training: no scored groups arrived within 0.3 s"):
        channel.get(0.3, "step 4's training")
    with pytest.raises(TimeoutError, match="step 4's sync: scored groups 1 was not done within 0.2 s"):
        channel.wait_put(1, 0.2, "step 4's sync")
    assert time.monotonic() - start < 2


def test_wait_put_returns_once_that_many_items_were_put_even_if_taken_since():
    channel: Channel[int] = Channel("scored groups", 2)
    channel.put(1)
    channel.get(1, "x")
    threading.Timer(0.2, channel.put, (2,)).start()
    assert channel.wait_put(2, 5, "sync") >= 0.15


def test_staleness_is_how_many_updates_a_sample_lags_and_the_bound_keeps_those_within_k():
    # the trainer holds version 5; samples from versions 5, 4 and 2 lag it by 0, 1 and 3 updates
    assert staleness(5, [5, 4, 2]) == [0, 1, 3]
    assert within_bound(5, [5, 4, 2], max_staleness=1) == [True, True, False]
    assert within_bound(5, [5, 4, 2], max_staleness=0) == [True, False, False]


def test_scores_of_equal_rounds_concatenate_with_means_averaged_and_errors_added():
    first = Scores([1.0, 0.0], {"exact": [1.0, 0.0]}, {"reward/exact/mean": 0.5, "reward/exact/errors": 1}, 1)
    second = Scores([1.0, 1.0], {"exact": [1.0, 1.0]}, {"reward/exact/mean": 1.0, "reward/exact/errors": 2}, 2)
    both = concat([first, second])
    assert both.rewards == [1.0, 0.0, 1.0, 1.0] and both.by_function == {"exact": [1.0, 0.0, 1.0, 1.0]}
    assert both.metrics == {"reward/exact/mean": 0.75, "reward/exact/errors": 3} and both.num_errors == 3
    assert concat([first]) is first


def test_refill_trains_the_first_num_prompts_groups_whose_rewards_differ():
    recipe = load_recipe(
        TINY,
        ["algorithm.refill_zero_variance=true", "algorithm.drop_zero_variance_groups=true", "tracking.wandb=disabled"],
    )
    controller = GRPOController.__new__(GRPOController)  # trainable() reads the recipe alone
    controller.recipe = recipe
    # 7 groups of 2, as from refill rounds of 4 prompts; groups 0 and 3 scored alike; group 6 is past the 4 needed
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert controller.trainable(rewards).tolist() == [False, True, True, False, True, True, False]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.max_staleness=-1"], "algorithm.max_staleness"),
        (["algorithm.max_refill_rounds=0"], "algorithm.max_refill_rounds"),
        (["algorithm.refill_zero_variance=true"], "algorithm.refill_zero_variance needs algorithm.drop_zero_variance"),
        (
            [
                "algorithm.max_staleness=1",
                "rollout.engine=lmdeploy",
                "placement.device=cuda",
                "rollout.sleep_while_training=true",
            ],
            "algorithm.max_staleness=1 generates while the trainer updates.*set rollout.sleep_while_training=false",
        ),
    ],
)
def test_bad_pipeline_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(TINY, overrides)
