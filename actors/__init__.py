"""The three actor groups: trainer, rollout and reward."""
