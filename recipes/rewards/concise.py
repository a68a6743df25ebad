"""An example user reward, loaded by path: ``reward.functions=[recipes/rewards/concise.py:concise_answer]``."""

import re


def concise_answer(completion: str, *, prompt: str, answer: int, **row) -> dict:
    """1 for a reply that is just the correct number; 0.5 if the number is right but wrapped in words."""
    numbers = re.findall(r"-?\d+", completion)
    correct = bool(numbers) and int(numbers[-1]) == int(answer)
    return {"score": (1.0 if completion.strip() == str(answer) else 0.5) * correct, "words": len(completion.split())}
