import pytest
import ray


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray for one test module; actors run in a copy of the repo, so relative paths resolve."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=2**30,
        runtime_env={"working_dir": str(request.config.rootpath), "excludes": [".venv", "runs", ".git", ".device"]},
    )
    yield
    ray.shutdown()
