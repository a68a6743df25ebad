"""A reward that scores half the arithmetic prompts alike in every sample, so DAPO's refill has groups to replace."""


def odd_answers_score_zero(completion: str, *, prompt: str, answer: str, **row: object) -> float:
    """0 for a prompt whose answer is odd (a group with equal rewards); else the completion's length parity."""
    return 0.0 if int(answer) % 2 else float(len(completion) % 2)
