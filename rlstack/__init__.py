"""rlstack: RL post-training for language models on Ray.

The plug-in APIs are re-exported here, so user code imports only from ``rlstack``: rewards (``batched``) and
multi-turn environments (``Environment``, ``Step``).
"""

from reward.api import batched
from rlstack.environment import Environment, Step

__all__ = ["Environment", "Step", "batched"]
