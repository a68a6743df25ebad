"""A prompt as the controller sees it, whichever dataset it came from."""

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

Message = dict[str, str]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


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


class Indexed(Protocol[T_co]):
    """Items by index, e.g. prompts of a file that are read only when asked for."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> T_co: ...


PromptSet = Indexed[Prompt]


class EpochSampler(Generic[T]):
    """Endless epochs over indexed items (prompts, conversations, pairs), in a fresh permutation per epoch
    (or in order).

    The permutation of epoch ``e`` is a pure function of ``(seed, e)``, so the state is
    just ``(epoch, position)``: it stays two integers for a billion prompts, and a run
    resumed from it continues with the next unseen item.
    """

    def __init__(self, items: Indexed[T], seed: int, shuffle: bool = True):
        if len(items) == 0:
            raise ValueError("no training data to sample from")
        self.items = items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self.order = self.permutation(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.items))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.items))

    def state(self) -> dict[str, int]:
        """Where the sampler is: enough to continue with the next unseen item."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = self.permutation(self.epoch)

    def next_index(self) -> int:
        """Index of the next item; a new epoch starts when this one is used up."""
        if self.position == len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self.permutation(self.epoch)
        self.position += 1
        return int(self.order[self.position - 1])

    def next_batch(self, size: int) -> list[T]:
        return [self.items[self.next_index()] for _ in range(size)]
