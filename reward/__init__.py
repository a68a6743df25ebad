"""Reward functions: the loader and the built-in rewards. Depends on nothing of rlstack's."""
