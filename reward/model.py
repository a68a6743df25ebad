"""A model-based reward: a Hugging Face sequence-classification model scores (prompt, completion)."""

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward.api import batched


@batched
class SequenceClassifierReward:
    """Batched scoring with ``AutoModelForSequenceClassification``.

    The score of a sample is the logit of ``label`` for the text ``prompt + completion``
    (for a one-label reward model, its single output). Runs where its actor runs: give
    it ``dedicated: true`` and ``num_gpus`` in the recipe to put it on its own GPU actor.
    """

    def __init__(
        self, model_path: str, label: int = 0, batch_size: int = 16, device: str = "cpu", max_length: int = 1024
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path).to(device).eval()  # type: ignore[arg-type]
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label = label
        self.batch_size = batch_size
        self.device = device
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, completions: list[str], *, prompts: list[str], rows: list[dict]) -> list[float]:
        scores: list[float] = []
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            logits = self.model(**batch).logits  # [B, num_labels]
            scores.extend(logits[:, self.label].float().tolist())
        return scores
