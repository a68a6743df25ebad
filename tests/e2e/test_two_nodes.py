"""Two Ray nodes on this machine, told apart by custom resources: the recipe decides where each group runs,
and GRPO works across them (weights cross nodes through the object store or the broadcast group)."""

import json
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from rlstack.config import load_recipe
from rlstack.controller import GRPOController
from tests.engines import fingerprints

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_nodes(request):
    """A head node labelled ``node_a`` and a worker node labelled ``node_b``, each its own raylet."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"node_a": 8}, "object_store_memory": 2**29},
    )
    worker = cluster.add_node(num_cpus=2, resources={"node_b": 8}, object_store_memory=2**29)
    ray.init(
        address=cluster.address,
        runtime_env={"working_dir": str(request.config.rootpath), "excludes": [".venv", "runs", ".git", ".device"]},
    )
    cluster.wait_for_nodes()
    head_id = next(n["NodeID"] for n in ray.nodes() if "node_a" in n["Resources"])
    yield {"node_a": head_id, "node_b": worker.node_id}
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.parametrize("transport", ["object_store", pytest.param("broadcast", marks=pytest.mark.slow)])
def test_groups_go_where_the_recipe_asks_and_train_across_nodes(two_nodes, tmp_path, request, transport):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [
            f"reward.functions=[{request.config.rootpath}/tests/assets/rewards.py:distinct_characters]",
            f"tracking.run_root={tmp_path}",
            "rollout.dtype=float32",
            f"rollout.weight_transport={transport}",
            "placement.strategy=STRICT_SPREAD",  # one trainer rank per node
            "placement.rollout_resources={node_b: 1}",
            "placement.reward_resources={node_a: 1}",
            "placement.num_reward_workers=1",
        ],
    )
    with GRPOController(recipe, tmp_path / "run") as controller:
        summary = controller.run()
        trainer_weights = controller.trainer.fingerprint()
        engine_weights = fingerprints(controller.rollout)[0]
    placement = json.loads((tmp_path / "run/placement.json").read_text())
    assert sorted(placement["trainer"]) == sorted(two_nodes.values())
    assert placement["rollout"] == [two_nodes["node_b"]]
    assert placement["reward"] == [two_nodes["node_a"]]
    assert engine_weights == trainer_weights
    assert summary["policy_version"] == 2


@pytest.mark.parametrize(
    "group",
    ["trainer", pytest.param("rollout", marks=pytest.mark.slow), pytest.param("reward", marks=pytest.mark.slow)],
)
def test_a_resource_no_node_has_fails_at_once_naming_the_setting(two_nodes, tmp_path, request, group):
    recipe = load_recipe(
        request.config.rootpath / "recipes/grpo_tiny_random.yaml",
        [f"tracking.run_root={tmp_path}", f"placement.{group}_resources={{node_c: 1}}"],
    )
    with pytest.raises(RuntimeError, match=f"placement.{group}_resources asks for node_c: "):
        GRPOController(recipe, tmp_path / "run")
    deadline = time.monotonic() + 30  # killed actors give their CPUs back asynchronously
    while ray.available_resources().get("CPU") != ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources()["CPU"] == ray.cluster_resources()["CPU"]  # nothing left running
