"""The LMDeploy adapter's own logic, against a fake ``lmdeploy`` (the real one needs a GPU: tests/gpu)."""

import asyncio
import sys
import threading
import types
from dataclasses import dataclass, field

import pytest
import torch

from rlstack.types import SamplingParams
from rollout import lmdeploy_engine
from rollout.lmdeploy_engine import LMDeployEngine, expand_requests, sampled_logprobs


@dataclass
class FakeResponse:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]]
    finish_reason: str = "stop"

    def extend(self, other: "FakeResponse") -> "FakeResponse":
        return FakeResponse(
            self.text + other.text,
            self.token_ids + other.token_ids,
            self.logprobs + other.logprobs,
            other.finish_reason,
        )


@dataclass
class FakeOut:
    response: FakeResponse

    def to_response(self) -> FakeResponse:
        return self.response


@dataclass
class FakeAsyncEngine:
    """Answers each request with its last prompt token + 1, then + 2, in two streamed parts."""

    calls: list = field(default_factory=list)
    configs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session_mgr = types.SimpleNamespace(get=lambda: object())
        self.engine = types.SimpleNamespace(update_params=lambda request: self.calls.append(("update", request)))

    async def preprocess(self, messages, session_id, gen_config, input_ids):
        assert messages is None
        self.configs.append(gen_config)
        return input_ids

    async def generate(self, request, stream_response):
        assert stream_response is False
        last = request[-1]
        yield FakeOut(FakeResponse("a", [last + 1], [{last + 1: -0.5, 7: -1.0}], "length"))
        yield FakeOut(FakeResponse("b", [last + 2], [{last + 2: -0.25}], "stop"))

    async def sleep(self, level):
        self.calls.append(("sleep", level))

    def wakeup(self, tags):
        self.calls.append(("wakeup", tags))

    def complete_weights_update(self):
        self.calls.append(("complete",))


class FakePipeline:
    def __init__(self) -> None:
        self.async_engine = FakeAsyncEngine()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        self.internal_thread = types.SimpleNamespace(loop=loop)


class FakeFlattenedBucket:
    def __init__(self, named_tensors):
        self.named_tensors = named_tensors

    def get_metadata(self):
        return [(name, tuple(t.shape)) for name, t in self.named_tensors]

    def get_flattened_tensor(self):
        return torch.cat([t.flatten() for _, t in self.named_tensors])


@pytest.fixture
def fake_lmdeploy(monkeypatch):
    """A stand-in ``lmdeploy`` package with the names the adapter imports."""
    package = types.ModuleType("lmdeploy")
    package.PytorchEngineConfig = lambda **kwargs: kwargs
    package.GenerationConfig = lambda **kwargs: types.SimpleNamespace(**kwargs)
    created = []

    def pipeline(path, backend_config, log_level):
        created.append((path, backend_config))
        return FakePipeline()

    package.pipeline = pipeline
    utils = types.ModuleType("lmdeploy.utils")
    utils.serialize_state_dict = lambda state: "serialized:" + ",".join(name for name, _ in state["metadata"])
    utils.FlattenedTensorBucket = FakeFlattenedBucket
    protocol = types.ModuleType("lmdeploy.serve.openai.protocol")
    protocol.UpdateParamsRequest = lambda **kwargs: kwargs
    for name, module in {
        "lmdeploy": package,
        "lmdeploy.utils": utils,
        "lmdeploy.serve": types.ModuleType("lmdeploy.serve"),
        "lmdeploy.serve.openai": types.ModuleType("lmdeploy.serve.openai"),
        "lmdeploy.serve.openai.protocol": protocol,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(lmdeploy_engine, "on_gpu", lambda bucket: dict(bucket))
    return created


@pytest.fixture
def engine(fake_lmdeploy):
    return LMDeployEngine("random:tiny", torch.bfloat16, tensor_parallel_size=2, timeout_s=10)


def test_the_pipeline_starts_empty_with_the_ray_executor(engine, fake_lmdeploy):
    path, config = fake_lmdeploy[0]
    assert "random-tiny-" in path
    assert config["distributed_executor_backend"] == "ray"
    assert (config["empty_init"], config["logprobs_mode"]) == (True, "raw_logprobs")
    assert (config["tp"], config["dtype"]) == (2, "bfloat16")


def test_requests_repeat_each_prompt_n_times():
    assert expand_requests([[1, 2], [3]], 2) == [[1, 2], [1, 2], [3], [3]]


def test_sampled_logprobs_pick_each_sampled_token_and_reject_missing_rows():
    assert sampled_logprobs([5, 6], [{5: -0.1, 9: -2.0}, {6: -0.3}]) == (-0.1, -0.3)
    with pytest.raises(RuntimeError, match="1 logprob rows for 2 tokens"):
        sampled_logprobs([5, 6], [{5: -0.1}])


def test_the_engine_refuses_to_serve_before_the_first_sync(engine):
    with pytest.raises(RuntimeError, match="no weights"):
        engine.generate([[1]], SamplingParams())


def test_the_first_sync_sends_every_bucket_then_wakes_the_kv_cache(engine):
    calls = engine.engine.calls
    engine.load_weights(3, [{"a": torch.ones(1), "c": torch.ones(2)}, "ipc-handles", {"b": torch.ones(1)}])
    assert calls[0][0] == "update"  # empty init: weights are allocated, only the KV cache sleeps
    updates = [request for kind, *request in calls if kind == "update"]
    assert [u[0]["serialized_named_tensors"] for u in updates] == ["serialized:a,c", "ipc-handles", "serialized:b"]
    assert [u[0]["finished"] for u in updates] == [False, False, True]
    assert {u[0]["load_format"] for u in updates} == {"flattened_bucket"}
    assert calls[-2:] == [("complete",), ("wakeup", ["kv_cache"])]
    assert engine.policy_version == 3

    calls.clear()
    engine.load_weights(4, ["x"])  # awake: no wake-ups
    assert [c[0] for c in calls] == ["update", "complete"]


def test_sleeping_frees_the_engine_until_the_next_sync(engine):
    engine.load_weights(1, ["x"])
    engine.sleep()
    assert engine.engine.calls[-1] == ("sleep", 2)
    with pytest.raises(RuntimeError, match="sleeps"):
        engine.generate([[1]], SamplingParams())
    engine.engine.calls.clear()
    engine.load_weights(2, ["y"])
    assert [c[0] if c[0] != "wakeup" else c for c in engine.engine.calls] == [
        ("wakeup", ["weights"]),
        "update",
        "complete",
        ("wakeup", ["kv_cache"]),
    ]


def test_generate_groups_n_responses_per_prompt_with_their_logprobs(engine):
    engine.load_weights(5, ["x"])
    params = SamplingParams(n=2, max_new_tokens=7, temperature=1.0, stop=("\n",), seed=11)
    groups = engine.generate([[10], [20, 30]], params)
    assert [[c.token_ids for c in g] for g in groups] == [[(11, 12), (11, 12)], [(31, 32), (31, 32)]]
    completion = groups[1][0]
    assert completion.logprobs == (-0.5, -0.25)
    assert (completion.text, completion.finish_reason, completion.policy_version) == ("ab", "stop", 5)
    config = engine.engine.configs[0]
    assert (config.max_new_tokens, config.do_sample, config.top_k, config.logprobs) == (7, True, 0, 1)
    assert (config.stop_words, config.include_stop_str_in_output) == (["\n"], True)


def test_each_of_a_prompts_n_requests_draws_with_a_seed_of_its_own(engine):
    engine.load_weights(0, ["x"])
    engine.generate([[10], [20]], SamplingParams(n=8, seed=11))
    seeds = [config.random_seed for config in engine.engine.configs]
    engine.generate([[10], [20]], SamplingParams(n=8, seed=11))
    again = [config.random_seed for config in engine.engine.configs[16:]]
    engine.generate([[10], [20]], SamplingParams(n=8, seed=12))
    other = [config.random_seed for config in engine.engine.configs[32:]]
    assert len(seeds) == len(set(seeds)) == 16  # every request, in and across groups, has its own stream
    assert again == seeds  # the batch seed fixes them
    assert not set(other) & set(seeds)


def test_greedy_requests_do_not_sample(engine):
    engine.load_weights(0, ["x"])
    engine.generate([[1]], SamplingParams(temperature=0.0))
    config = engine.engine.configs[-1]
    assert (config.do_sample, config.temperature) == (False, 1.0)


def test_the_uni_executor_loads_tensors_in_process_and_ipc_handles_through_its_model_agent(fake_lmdeploy, monkeypatch):
    engine = LMDeployEngine("random:tiny", torch.bfloat16, timeout_s=10, executor="uni")
    _, config = fake_lmdeploy[-1]
    assert (config["distributed_executor_backend"], config["empty_init"]) == ("uni", False)
    agent_requests, loaded = [], []
    engine.engine.engine.executor = types.SimpleNamespace(
        model_agent=types.SimpleNamespace(update_params=agent_requests.append)
    )
    monkeypatch.setattr(
        engine, "_load_in_process", lambda tensors, finished: loaded.append((sorted(tensors), finished))
    )
    engine.load_weights(1, [{"a": torch.ones(1)}, "ipc-handles"])
    assert loaded == [(["a"], False)]
    assert [(r["serialized_named_tensors"], r["finished"]) for r in agent_requests] == [("ipc-handles", True)]
    assert ("wakeup", ["kv_cache"]) not in engine.engine.calls  # it started awake, from the model's weights
    assert engine.policy_version == 1
