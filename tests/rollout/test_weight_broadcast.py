"""Broadcast weight sync: the bucket plan, flat buckets, and a real gloo group between two threads."""

import socket
import threading

import pytest
import torch

from rlstack import models
from rollout.weight_broadcast import WeightGroup, flatten, plan_buckets, unflatten


def test_buckets_close_once_they_reach_the_limit():
    entries = [("a", (1024, 256)), ("b", (1024, 256)), ("c", (4,)), ("d", (1024, 1024))]  # 1 MiB each in fp32
    assert plan_buckets(entries, bucket_mb=1, element_size=4) == [[entries[0]], [entries[1]], [entries[2], entries[3]]]
    assert plan_buckets(entries, bucket_mb=100, element_size=2) == [entries]


def test_flatten_then_unflatten_gives_back_every_tensor():
    bucket = {"w": torch.randn(3, 4), "b": torch.randn(5)}
    views = unflatten(flatten(bucket), [("w", (3, 4)), ("b", (5,))])
    assert all(torch.equal(views[name], bucket[name]) for name in bucket)
    with pytest.raises(ValueError, match="holds 17 elements, the plan 12"):
        unflatten(flatten(bucket), [("w", (3, 4))])


def test_an_engine_receives_what_rank_0_broadcasts_bucket_by_bucket():
    weights = {name: param.detach() for name, param in models.load_model("random:tiny", seed=3).named_parameters()}
    plan = plan_buckets([(n, tuple(t.shape)) for n, t in weights.items()], bucket_mb=0, element_size=4)
    assert len(plan) == len(weights)  # one parameter per bucket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def send() -> None:
        group = WeightGroup("127.0.0.1", port, 0, 2, "cpu", timeout_s=60)
        for entries in plan:
            group.broadcast(flatten({name: weights[name] for name, _ in entries}))

    sender = threading.Thread(target=send)
    sender.start()
    receiver = WeightGroup("127.0.0.1", port, 1, 2, "cpu", timeout_s=60)
    received = {name: t.clone() for bucket in receiver.receive(plan, torch.float32) for name, t in bucket.items()}
    sender.join()
    assert received.keys() == weights.keys()
    assert all(torch.equal(received[name], weights[name]) for name in weights)


def test_the_engines_plan_matches_the_trainers_model():
    model = models.load_model("random:tiny")
    assert models.parameter_shapes("random:tiny") == [(n, tuple(p.shape)) for n, p in model.named_parameters()]
