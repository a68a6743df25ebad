"""Wire types passed between the controller and the actor groups."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples; ``temperature == 0`` means greedy."""

    n: int = 1
    """Samples per prompt."""
    max_new_tokens: int = 40
    """Response length cap, in tokens."""
    temperature: float = 1.0
    """Softmax temperature; 0 picks the argmax token."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    seed: int = 0
    """Seed of this batch's sampling (engines that can seed a batch)."""
    stop: tuple[str, ...] = ()
    """Strings that end a response; the stop string is kept in it."""


@dataclass(frozen=True)
class Completion:
    """One sampled response, identical in shape whichever engine produced it."""

    token_ids: tuple[int, ...]
    """Sampled token ids, including the stop token if one was sampled."""
    logprobs: tuple[float, ...]
    """Logprob of each sampled token under the sampling distribution, as the engine computed it."""
    finish_reason: Literal["stop", "length"]
    """``stop``: an end-of-sequence token was sampled; ``length``: the cap was hit."""
    policy_version: int
    """Version of the weights that produced it."""
    text: str
    """The decoded response, without special tokens (a multi-turn trajectory's: every turn, with its chat
    markup)."""
    model_mask: tuple[int, ...] | None = None
    """Multi-turn trajectories: per token, 1 where the model sampled it and 0 where the environment's messages
    put it (context, with logprob 0, that carries no loss); ``None``: every token is the model's."""

    def __post_init__(self) -> None:
        if self.model_mask is not None and len(self.model_mask) != len(self.token_ids):
            raise ValueError(f"token_ids has {len(self.token_ids)} tokens but model_mask has {len(self.model_mask)}")

    @property
    def num_model_tokens(self) -> int:
        """Tokens the model sampled."""
        return len(self.token_ids) if self.model_mask is None else sum(self.model_mask)


@dataclass(frozen=True)
class Sample:
    """A scored completion, ready to become a training sequence."""

    prompt_ids: tuple[int, ...]
    """The templated prompt."""
    completion: Completion
    """The engine's response."""
    advantage: float
    """Group-relative advantage of this sample."""
    masked: bool = False
    """True for a padding sample that only keeps ranks in step; its tokens carry no loss."""


@dataclass(frozen=True)
class TrainBatch:
    """One rank's share of a training batch, plus the batch-wide normalisers."""

    samples: tuple[Sample, ...]
    """Sequences for this rank; a sample with ``advantage == 0`` and an empty mask pads uneven shards."""
    num_tokens: int
    """Response tokens in the whole batch (all ranks)."""
    num_seqs: int
    """Sequences in the whole batch (all ranks)."""
    max_tokens: int
    """The response length cap."""


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred response, tokenized."""

    prompt_ids: tuple[int, ...]
    """The templated prompt, ending with the assistant's generation prompt."""
    chosen_ids: tuple[int, ...]
    """The preferred response's tokens, ending with the end-of-turn token."""
    rejected_ids: tuple[int, ...]
    """The dispreferred response's tokens, ending with the end-of-turn token."""


@dataclass(frozen=True)
class SFTExample:
    """One tokenized conversation."""

    input_ids: tuple[int, ...]
    """Token ids of the whole rendered conversation."""
    loss_mask: tuple[int, ...]
    """1 where the token is an assistant token the model learns to predict, else 0; one per input id."""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"input_ids has {len(self.input_ids)} tokens but loss_mask has {len(self.loss_mask)}")


@dataclass(frozen=True)
class SFTBatch:
    """One rank's share of an SFT batch."""

    examples: tuple[SFTExample, ...]
    """Tokenized conversations for this rank; the rank packs them into micro-batches."""
    num_tokens: int
    """Trained (assistant) tokens in the whole batch (all ranks): the loss normaliser."""


@dataclass(frozen=True)
class PreferenceBatch:
    """One rank's share of a DPO batch."""

    pairs: tuple[PreferencePair, ...]
    """Preference pairs for this rank."""
    reference: tuple[tuple[float, float], ...] | None
    """Precomputed reference logprobs ``(chosen, rejected)`` per pair, summed over tokens; ``None`` has the
    trainer's frozen reference model compute them."""
    num_pairs: int
    """Pairs in the whole batch (all ranks): the loss normaliser."""
