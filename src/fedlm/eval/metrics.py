"""Held-out language-model metrics: loss, perplexity and next-token accuracy.

Metrics are token-weighted sums, so per-client results combine exactly into a
federation-wide figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedlm.data.formatting import IGNORE, Example, collate
from fedlm.models.device import module_device, to_device


@dataclass(frozen=True)
class LMScore:
    """Sums over scored tokens; combine with ``+``."""

    loss_sum: float = 0.0
    correct: int = 0
    tokens: int = 0

    def __add__(self, other: LMScore) -> LMScore:
        return LMScore(self.loss_sum + other.loss_sum, self.correct + other.correct, self.tokens + other.tokens)

    def as_dict(self) -> dict[str, float]:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)) if self.tokens else float("nan"),
            "token_accuracy": self.correct / self.tokens if self.tokens else float("nan"),
            "tokens": self.tokens,
        }


@torch.no_grad()
def score_lm(model: torch.nn.Module, examples: Sequence[Example], *, pad_id: int, batch_size: int, max_batches: int | None = None) -> LMScore:
    """Sum next-token cross-entropy (nats) and argmax hits over labelled tokens."""
    model.eval()
    device = module_device(model)
    total = LMScore()
    for b, start in enumerate(range(0, len(examples), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        batch = to_device(collate(examples[start : start + batch_size], pad_id=pad_id), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]  # predict token t+1 from t
        keep = labels != IGNORE
        loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
        hits = (logits[keep].argmax(-1) == labels[keep]).sum()
        total = total + LMScore(float(loss), int(hits), int(keep.sum()))
    return total
