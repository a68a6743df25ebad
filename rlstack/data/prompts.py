"""A prompt as the controller sees it, whichever dataset it came from."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Message = dict[str, str]


@dataclass(frozen=True)
class Prompt:
    """One training or held-out prompt and the fields its rewards receive."""

    messages: tuple[Message, ...]
    """The chat so far, OpenAI style (``{"role", "content"}``), ending with a user turn."""
    fields: dict[str, Any]
    """Keyword fields for the reward functions: ``answer`` and the row's other columns."""

    @property
    def question(self) -> str:
        """The last user message: what rewards receive as ``prompt``."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


def user_prompt(content: str, **fields: Any) -> Prompt:
    """A one-turn prompt."""
    return Prompt(({"role": "user", "content": content},), fields)


class PromptSet(Protocol):
    """Prompts by index; a file-backed set reads each one only when asked."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Prompt: ...


class PromptSampler:
    """Endless epochs over a prompt set, in a fresh permutation per epoch (or in order).

    The permutation of epoch ``e`` is a pure function of ``(seed, e)``, so the state is
    just ``(epoch, position)``: it stays two integers for a billion prompts, and a run
    resumed from it continues with the next unseen prompt.
    """

    def __init__(self, prompts: PromptSet | Sequence[Prompt], seed: int, shuffle: bool = True):
        if len(prompts) == 0:
            raise ValueError("no training prompts to sample from")
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self.order = self.permutation(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def state(self) -> dict[str, int]:
        """Where the sampler is: enough to continue with the next unseen prompt."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = self.permutation(self.epoch)

    def __iter__(self) -> Iterator[Prompt]:
        while True:
            if self.position == len(self.order):
                self.epoch, self.position = self.epoch + 1, 0
                self.order = self.permutation(self.epoch)
            index = int(self.order[self.position])
            self.position += 1
            yield self.prompts[index]

    def next_batch(self, size: int) -> list[Prompt]:
        iterator = iter(self)
        return [next(iterator) for _ in range(size)]
