"""Local training on one client's examples: the inner loop of every round.

AdamW (or plain SGD) steps on the trainable tensors (LoRA or full), a fresh optimiser
each round (optimiser state never leaves the client), and batches drawn by a seeded
shuffle so a run is reproducible. The local objectives of :mod:`fedlm.client.objectives`
enter as gradient terms: FedProx's ``mu (w - w_global)`` and SCAFFOLD's ``c - c_i``.
Tensors named in ``frozen`` are not trained this round; ``keep_zero``
masks keep a truncated low-rank client's unused LoRA components at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlm.data.formatting import Example, collate
from fedlm.errors import ConfigError
from fedlm.models.adapters import AdaptedModel
from fedlm.models.device import module_device, to_device


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


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def train_local(
    model: AdaptedModel,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    lr_steps: Sequence[float] | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    optimizer_state: dict | None = None,
    optimizer: str = "adamw",
    prox_mu: float = 0.0,
    correction: Mapping[str, torch.Tensor] | None = None,
    frozen: Collection[str] = (),
    keep_zero: Mapping[str, torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
) -> LocalResult:
    """Run ``steps`` optimiser steps on ``examples``, updating ``model`` in place.

    Args:
        lr_steps: each step's lr, overriding ``lr`` (a schedule that counts local steps).
        optimizer_state: continues a previous round's optimiser moments (DiLoCo keeps
            the inner optimiser per worker); the result carries the new state when given.
        optimizer: "adamw" or "sgd" (no momentum).
        prox_mu: FedProx (Li et al. 2020): adds ``mu/2 ||w - w_start||^2`` to the loss,
            i.e. ``mu (w - w_start)`` to the gradient (before clipping, as part of the loss).
        correction: SCAFFOLD (Karimireddy et al. 2020): ``c - c_i`` by trainable name,
            added to every (clipped) gradient.
        frozen: trainable names left untouched this round.
        keep_zero: name -> 0/1 mask multiplied into the tensor after every step.
        after_step: called after every optimiser step (Ditto's proximal step toward the global model).
    """
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"local optimizer {optimizer!r} is unknown; choose 'adamw' or 'sgd'")
    torch.manual_seed(seed)  # dropout masks, if any
    named = [(n, p) for n, p in zip(model.names(), model.parameters(), strict=True) if n not in frozen]
    params = [p for _, p in named]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
        set_lr(opt, lr)  # the round's lr, not the saved one
    start = {n: p.detach().clone() for n, p in named} if prox_mu else {}
    pad = model.tokenizer.pad_token_id
    device = module_device(model.model)
    model.model.train()
    losses = []
    seen = 0
    stream = batches(examples, batch_size=batch_size, seed=seed)
    for step in range(steps):
        if lr_steps is not None:
            set_lr(opt, lr_steps[step])
        batch = to_device(collate(next(stream), pad_id=pad), device)
        loss = model.model(**batch).loss
        loss.backward()
        with torch.no_grad():
            if prox_mu:
                for n, p in named:
                    if p.grad is not None:
                        p.grad.add_(p - start[n], alpha=prox_mu)
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if correction is not None:
                for n, p in named:
                    if p.grad is not None:
                        p.grad.add_(correction[n].to(p.device, p.dtype))
        opt.step()
        model.model.zero_grad(set_to_none=True)  # frozen tensors' gradients too
        if keep_zero:
            with torch.no_grad():
                for n, p in named:
                    if n in keep_zero:
                        p.mul_(keep_zero[n].to(p.device))
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        seen += batch["input_ids"].shape[0]
    model.model.eval()
    mean = float(np.mean(losses)) if losses else float("nan")
    # Kept optimizer state stays with the client's other state, on the CPU; AdamW's
    # load_state_dict moves it back to the parameters' device next round.
    state = _on_cpu(opt.state_dict()) if optimizer_state is not None else None
    return LocalResult(steps=steps, examples_seen=seen, mean_loss=mean, optimizer_state=state)


def _on_cpu(value):
    """A state dict (nested dicts and lists of tensors and numbers) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_cpu(v) for v in value]
    return value
