"""Weight sync from the trainer group to the rollout group, over the recipe's ``rollout.weight_transport``."""

import ray

from actors.rollout import RolloutGroup
from actors.trainer import TrainerGroup
from rlstack.config import RolloutSection


class WeightSync:
    """Pushes the trainer's full weights to every engine; returns the versions the engines then serve.

    - ``object_store``: trainer rank 0 puts buckets in the object store, each engine fetches them.
    - ``cuda_ipc``: the same, carrying CUDA IPC handles (LMDeploy's format, or ``SharedBucket`` for vLLM); the
      trainer frees its GPU buckets afterwards.
    - ``broadcast``: trainer rank 0 and the engines form a process group on first use, then
      rank 0 sends while the engines receive.

    With ``model.lora``, ``rollout.lora_sync`` says what is sent: full weights with the adapter merged in
    (``merged``, over any transport), or the adapter's tensors alone (``adapter``, through the object store),
    after the base weights once, at the first push to this group's engines.
    """

    def __init__(self, trainer: TrainerGroup, rollout: RolloutGroup, config: RolloutSection):
        self.trainer = trainer
        self.rollout = rollout
        self.config = config
        self.group_joined = False
        self.base_sent = False

    def push(self, version: int) -> list[int]:
        config = self.config
        if config.lora_sync == "adapter":  # the LoRA adapter alone, through the object store
            if not self.base_sent:
                base = self.trainer.state_dict_buckets(config.bucket_mb, config.dtype, merge_adapter=False)
                self.rollout.update_weights(version, base)
                self.base_sent = True
            return self.rollout.update_adapter(version, self.trainer.adapter_buckets(config.dtype))
        if config.weight_transport == "broadcast":
            self._join_group()
            sending = self.trainer.broadcast_weights(config.bucket_mb, config.dtype)
            versions = self.rollout.receive_weights(version)
            self.trainer.wait(sending, "broadcast_weights")
            return versions
        refs = self.trainer.state_dict_buckets(config.bucket_mb, config.dtype, config.weight_transport, config.engine)
        versions = self.rollout.update_weights(version, refs)
        if config.weight_transport == "cuda_ipc":
            self.trainer.release_buckets()
        return versions

    def _join_group(self) -> None:
        if self.group_joined:
            return
        host, port = self.trainer.weight_group_address()
        joins = self.trainer.join_weight_group(host, port, len(self.rollout.workers) + 1)
        ray.get(joins + self.rollout.join_weight_group(host, port), timeout=self.config.start_timeout_s)
        self.group_joined = True
