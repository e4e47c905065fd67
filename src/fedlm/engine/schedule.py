"""The client learning-rate schedule: by round, or by local step across rounds.

``federation.lr_schedule`` (constant, cosine, linear) runs over rounds, or with
``lr_schedule_unit: step`` over rounds x local_steps, so DiLoCo-style runs that differ in
local steps see the same lr at the same inner step; ``federation.warmup`` ramps it first.
"""

from __future__ import annotations

import math

from fedlm.config.schema import FederationConfig


def lr_at(fed: FederationConfig, r: int) -> float:
    """The client lr at the start of round ``r`` (1-based)."""
    if fed.lr_schedule_unit == "step":
        return scheduled(fed, (r - 1) * (fed.local_steps or 1), fed.rounds * (fed.local_steps or 1))
    return scheduled(fed, r - 1, fed.rounds)


def step_lrs(fed: FederationConfig, r: int, steps: int) -> list[float] | None:
    """Each local step's lr in round ``r`` when the schedule counts steps; else None (the round's lr)."""
    if fed.lr_schedule_unit != "step" or (fed.lr_schedule == "constant" and not fed.warmup):
        return None
    h = fed.local_steps or 1
    return [scheduled(fed, (r - 1) * h + k, fed.rounds * h) for k in range(steps)]


def scheduled(fed: FederationConfig, t: int, total: int) -> float:
    """The schedule at position ``t`` of ``total`` (0-based).

    A linear warm-up over the first ``warmup`` positions (lr x (t + 1) / warmup), then lr
    decaying to lr x min_lr_ratio at the last position (cosine, linear) or held (constant).
    """
    if t < fed.warmup:
        return fed.lr * (t + 1) / fed.warmup
    t, total = t - fed.warmup, total - fed.warmup
    if fed.lr_schedule == "constant" or total == 1:
        return fed.lr
    progress = min(t / (total - 1), 1.0)  # an attacker's extra steps stay at the final lr
    low = fed.lr * fed.min_lr_ratio
    if fed.lr_schedule == "cosine":
        return low + (fed.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return fed.lr - (fed.lr - low) * progress


__all__ = ["lr_at", "scheduled", "step_lrs"]
