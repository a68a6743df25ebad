"""What a rollout group's engines hold, read through each engine actor's own methods (for tests)."""

import ray


def fingerprints(rollout) -> list[dict[str, float]]:
    """Each engine's ``{name: sum of the parameter}``."""
    return ray.get([worker.fingerprint.remote() for worker in rollout.workers])


def policy_versions(rollout) -> list[int]:
    """The policy version each engine serves."""
    return ray.get([worker.policy_version.remote() for worker in rollout.workers])
