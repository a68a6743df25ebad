"""A shared bucket opens to the same names, shapes and values it packed, also after pickling."""

import pickle

import torch

from rollout.shared_bucket import share


def test_a_shared_bucket_opens_to_the_tensors_it_packed():
    bucket = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(4), "b": torch.randn(2, 2, 2)}
    shared, flat = share(bucket)
    assert flat.shape == (12 + 4 + 8,)
    for handle in (shared, pickle.loads(pickle.dumps(shared))):
        opened = handle.open()
        assert list(opened) == list(bucket)
        for name, tensor in bucket.items():
            assert torch.equal(opened[name], tensor), name
