"""Local training on one client's examples: the inner loop of every round.

Plain AdamW steps on the trainable tensors (LoRA or full), a fresh optimiser each
round (optimiser state never leaves the client and is not carried between rounds),
and batches drawn by a seeded shuffle so a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlm.data.formatting import Example, collate
from fedlm.models.adapters import AdaptedModel


@dataclass(frozen=True)
class LocalResult:
    """What local training reports (metrics, never data)."""

    steps: int
    examples_seen: int
    mean_loss: float
    optimizer_state: dict | None = None


def steps_for(num_examples: int, *, batch_size: int, local_steps: int | None, local_epochs: float | None) -> int:
    """Optimiser steps for one round: fixed, or enough for ``local_epochs`` passes."""
    if local_steps is not None:
        return local_steps
    return max(1, math.ceil((local_epochs or 1.0) * num_examples / batch_size))


def batches(examples: Sequence[Example], *, batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless batches: reshuffle each pass with a seeded generator."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < batch_size and len(examples) >= batch_size:
                break  # drop the ragged tail; the next pass starts a fresh shuffle
            yield [examples[i] for i in idx]


def train_local(
    model: AdaptedModel,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    optimizer_state: dict | None = None,
) -> LocalResult:
    """Run ``steps`` AdamW steps on ``examples``, updating ``model`` in place.

    ``optimizer_state`` continues a previous round's AdamW moments (DiLoCo keeps the
    inner optimiser per worker); the result carries the new state when one was given.
    """
    torch.manual_seed(seed)  # dropout masks, if any
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
        for group in opt.param_groups:  # the round's lr, not the saved one
            group["lr"] = lr
    pad = model.tokenizer.pad_token_id
    model.model.train()
    losses = []
    seen = 0
    stream = batches(examples, batch_size=batch_size, seed=seed)
    for _ in range(steps):
        batch = collate(next(stream), pad_id=pad)
        loss = model.model(**batch).loss
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        seen += batch["input_ids"].shape[0]
    model.model.eval()
    mean = float(np.mean(losses)) if losses else float("nan")
    state = opt.state_dict() if optimizer_state is not None else None
    return LocalResult(steps=steps, examples_seen=seen, mean_loss=mean, optimizer_state=state)
