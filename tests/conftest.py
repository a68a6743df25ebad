import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def offline_wandb():
    """Tests never reach the network: wandb runs offline unless a recipe disables it."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
