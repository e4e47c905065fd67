"""One client's local training as one typed object: the options every capability adjusts.

``TrainOptions`` groups what :func:`fedlm.client.trainer.train_local` and
:func:`fedlm.client.dp_sgd.train_local_dp_sgd` take, so the engine passes one value
through the capabilities' ``train_options`` hooks instead of a long argument list.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedlm.client.dp_sgd import train_local_dp_sgd
from fedlm.client.trainer import LocalResult, train_local
from fedlm.data.formatting import Example
from fedlm.models.adapters import AdaptedModel


@dataclass(frozen=True)
class DpSgdOptions:
    """Sample-level DP-SGD inside the client (Opacus): per-example clip and noise."""

    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class TrainOptions:
    """How one client trains this round; each capability adjusts its part (``replace``).

    Attributes:
        steps: optimiser steps (0: the client does not train).
        num_examples: the examples the client trains on (a profile's steps follow from them).
        batch_size: sequences per step.
        lr: the round's lr; ``lr_steps`` overrides it per step when a schedule counts steps.
        seed: batch order and dropout.
        weight_decay, max_grad_norm: AdamW decay and per-step gradient clipping.
        optimizer: "adamw" or "sgd".
        optimizer_state: a previous round's optimiser moments (DiLoCo), or None.
        prox_mu: FedProx's proximal weight.
        correction: SCAFFOLD's ``c - c_i`` by trainable name.
        frozen: trainable names left untouched this round.
        keep_zero: name -> 0/1 mask multiplied in after every step (a low-rank client).
        dp_sgd: sample-level DP-SGD, or None.
        report: per-client metrics a capability adds to the round record (batch size, rank).
    """

    steps: int
    batch_size: int
    lr: float
    seed: int
    num_examples: int = 0
    lr_steps: Sequence[float] | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    optimizer: str = "adamw"
    optimizer_state: dict | None = None
    prox_mu: float = 0.0
    correction: Mapping[str, torch.Tensor] | None = None
    frozen: Collection[str] = ()
    keep_zero: Mapping[str, torch.Tensor] | None = None
    dp_sgd: DpSgdOptions | None = None
    report: Mapping[str, float] = field(default_factory=dict)


def train(model: AdaptedModel, examples: Sequence[Example], options: TrainOptions) -> LocalResult:
    """Local training with ``options``: DP-SGD when ``options.dp_sgd`` is set, else :func:`train_local`."""
    if options.dp_sgd is not None:
        return train_local_dp_sgd(
            model, list(examples), steps=options.steps, batch_size=options.batch_size, lr=options.lr,
            seed=options.seed, lr_steps=options.lr_steps, noise_multiplier=options.dp_sgd.noise_multiplier,
            max_grad_norm=options.dp_sgd.max_grad_norm, weight_decay=options.weight_decay,
        )
    return train_local(
        model, examples, steps=options.steps, batch_size=options.batch_size, lr=options.lr, seed=options.seed,
        lr_steps=options.lr_steps, weight_decay=options.weight_decay, max_grad_norm=options.max_grad_norm,
        optimizer_state=options.optimizer_state, optimizer=options.optimizer, prox_mu=options.prox_mu,
        correction=options.correction, frozen=options.frozen, keep_zero=options.keep_zero,
    )


__all__ = ["DpSgdOptions", "TrainOptions", "train"]
