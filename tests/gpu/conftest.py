import pytest
import ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for one GPU test module; actors import the project from the working tree on PYTHONPATH."""
    ray.init(include_dashboard=False)
    yield
    ray.shutdown()
