from rlstack.data.batching import collate, micro_batches, shard
from rlstack.types import Completion, Sample


def sample(prompt_len: int, response_len: int, advantage: float = 1.0) -> Sample:
    completion = Completion(
        token_ids=tuple(range(100, 100 + response_len)),
        logprobs=tuple([-0.5] * response_len),
        finish_reason="stop",
        policy_version=0,
        text="",
    )
    return Sample(tuple(range(1, 1 + prompt_len)), completion, advantage)


def test_collate_left_pads_prompts_and_aligns_responses():
    data = collate([sample(2, 3), sample(4, 1, -1.0)], pad_id=0)
    assert data.input_ids.tolist() == [[0, 0, 1, 2, 100, 101, 102], [1, 2, 3, 4, 100, 0, 0]]
    assert data.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    assert data.position_ids[0].tolist()[2:] == [0, 1, 2, 3, 4]
    assert data.response_ids.tolist() == [[100, 101, 102], [100, 0, 0]]
    assert data.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert data.advantages.tolist() == [1.0, -1.0]


def test_micro_batches_respect_the_padded_token_budget():
    samples = [sample(5, n) for n in (1, 3, 5, 7, 9, 11)]
    groups = micro_batches(samples, token_budget=30)
    assert sorted(len(s.completion.token_ids) for g in groups for s in g) == [1, 3, 5, 7, 9, 11]
    for group in groups:
        longest = max(len(s.prompt_ids) + len(s.completion.token_ids) for s in group)
        assert len(group) == 1 or longest * len(group) <= 30


def test_shards_are_balanced_and_never_empty():
    # sizes 12, 10, 5, 5 (prompt 4 + response): 12 -> A, 10 -> B, 5 -> B (15), 5 -> A (17)
    shards = shard([sample(4, n) for n in (8, 1, 1, 6)], 2)
    assert sorted(sum(4 + len(s.completion.token_ids) for s in part) for part in shards) == [15, 17]
    padded = shard([sample(4, 2)], 3)
    assert [len(p) for p in padded] == [1, 1, 1]
    assert sum(s.masked for p in padded for s in p) == 2
    assert collate(padded[1], 0).response_mask.sum() == 0
