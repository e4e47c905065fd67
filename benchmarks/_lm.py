"""Per-example held-out loss and the validation/test halves of each client's held-out rows.

fedlm's ``score_lm`` sums over a client's batches; a paired test needs each example's own
loss, so :func:`example_losses` scores examples one row at a time of a batch (the same
next-token cross-entropy over labelled tokens, in nats).

:func:`split_heldout` cuts every client's held-out examples into two fixed halves,
``validation`` (even positions) and ``test`` (odd positions): the held-out draw is
already a seeded random sample of the client's rows, so the halves are two disjoint random
samples of the same kind. Hyperparameters are chosen on the first; results are reported
on the second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from fedlm.data.formatting import IGNORE, collate


@dataclass(frozen=True)
class Losses:
    """Per-example summed loss (nats) and labelled-token counts, in example order."""

    nll: np.ndarray
    tokens: np.ndarray

    @property
    def mean_loss(self) -> float:
        """Token-weighted mean loss (nats per token): what fedlm's held-out loss reports."""
        return float(self.nll.sum() / max(int(self.tokens.sum()), 1))

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mean_loss, 50.0))

    @property
    def per_example(self) -> np.ndarray:
        """Each example's mean loss per token (the unit a paired test compares)."""
        return self.nll / np.maximum(self.tokens, 1)


@torch.no_grad()
def example_losses(model: torch.nn.Module, examples: Sequence, *, pad_id: int, batch_size: int = 8) -> Losses:
    """Each example's summed next-token loss over its labelled tokens."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, tok = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate(list(examples[start:start + batch_size]), pad_id=pad_id)
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        target = labels[:, 1:]  # predict token t+1 from t
        keep = target != IGNORE
        ce = F.cross_entropy(logits.transpose(1, 2), target.clamp_min(0), reduction="none")  # (B, T-1)
        nll += (ce * keep).sum(1).tolist()
        tok += keep.sum(1).tolist()
    model.train(was)
    return Losses(np.asarray(nll, dtype=np.float64), np.asarray(tok, dtype=np.int64))


def split_heldout(data, *, cap: int | None = None):
    """``(validation, test)``: two views of ``data`` whose clients' held-out examples are the
    even and the odd positions of the original held-out list (each at most ``cap``).

    The training examples are shared, unchanged.
    """
    def view(part: int):
        clients = {cid: replace(c, heldout=c.heldout[part::2][:cap] if cap else c.heldout[part::2])
                   for cid, c in data.clients.items()}
        return replace(data, clients=clients)

    return view(0), view(1)
