"""Length-based shaping rewards, on the response length in tokens."""


def length_penalty(completion: str, *, completion_tokens: int, max_tokens: int, **row: object) -> float:
    """``-completion_tokens / max_tokens``: a linear push towards shorter answers, in [-1, 0].

    >>> length_penalty("...", completion_tokens=10, max_tokens=40)
    -0.25
    """
    return -min(completion_tokens, max_tokens) / max_tokens


def overlong_penalty(
    completion: str, *, completion_tokens: int, max_tokens: int, buffer_tokens: int, **row: object
) -> float:
    """DAPO's soft overlong punishment (https://arxiv.org/abs/2503.14476, eq. 13).

    With ``L = completion_tokens``, ``L_max = max_tokens`` and ``L_cache = buffer_tokens``::

        0                                  if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
        -1                                 if L > L_max

    >>> overlong_penalty("", completion_tokens=30, max_tokens=40, buffer_tokens=8)
    0.0
    >>> overlong_penalty("", completion_tokens=36, max_tokens=40, buffer_tokens=8)
    -0.5
    >>> overlong_penalty("", completion_tokens=41, max_tokens=40, buffer_tokens=8)
    -1.0
    """
    safe = max_tokens - buffer_tokens
    if completion_tokens <= safe:
        return 0.0
    if completion_tokens <= max_tokens:
        return (safe - completion_tokens) / buffer_tokens
    return -1.0
