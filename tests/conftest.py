import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped where CUDA is absent, with the reason shown."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; run on the lent GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def offline_wandb():
    """Tests never reach the network: wandb runs offline unless a recipe disables it."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
