"""Placement across nodes: custom Ray resources checked before anything waits on them."""

import ray


def require_resources(setting: str, demand: dict[str, float], count: int) -> None:
    """Fail at once, naming ``placement.<setting>``, when the cluster holds less of a custom resource than
    ``count`` actors asking ``demand`` each need in all; Ray itself would wait for it forever."""
    if not ray.is_initialized():
        ray.init()  # as Ray's own first remote call would
    total = ray.cluster_resources()
    for name, amount in demand.items():
        if amount * count > total.get(name, 0.0):
            raise RuntimeError(
                f"placement.{setting} asks for {name}: {amount * count:g} in all ({count} x {amount:g}), but the "
                f"cluster has {total.get(name, 0.0):g}; nodes get custom resources from `ray start --resources`"
            )


def node_id() -> str:
    """The Ray node this process runs on."""
    return ray.get_runtime_context().get_node_id()
