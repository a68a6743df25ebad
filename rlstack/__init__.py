"""rlstack: RL post-training for language models on Ray.

The reward plug-in API is re-exported here, so user code imports only from ``rlstack``.
"""

from reward.api import batched

__all__ = ["batched"]
