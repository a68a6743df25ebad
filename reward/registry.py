"""Reward names a recipe can use without a module path.

Built-ins are listed here; packages add their own through the entry-point group
``rlstack.rewards``, e.g. in their ``pyproject.toml``::

    [project.entry-points."rlstack.rewards"]
    my_reward = "my_pkg.rewards:my_reward"
"""

from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "rlstack.rewards"

BUILTINS = {
    "exact_match": "reward.arithmetic:exact_match",
    "gsm8k": "reward.gsm8k:gsm8k_exact_match",
    "math_verify": "reward.math:math_equivalence",
    "regex_format": "reward.format:regex_format",
    "think_answer_format": "reward.format:think_answer_format",
    "length_penalty": "reward.length:length_penalty",
    "overlong_penalty": "reward.length:overlong_penalty",
    "sequence_classifier": "reward.model:SequenceClassifierReward",
}


def registered() -> dict[str, str]:
    """``{name: "module:attribute"}`` of built-ins and installed entry points."""
    names = dict(BUILTINS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(entry.name, entry.value)
    return names
