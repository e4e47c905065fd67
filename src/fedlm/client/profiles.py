"""Per-client resource profiles and straggler simulation.

A profile fixes what one client can afford each round: its LoRA rank, local steps,
batch size and speed (local steps per simulated second). Profiles are given as a list
dealt cyclically over the sorted client ids, or drawn per client from a distribution.
With a round time budget ``T``, a client needing ``steps / speed > T`` seconds is a
straggler: it is dropped, or (``partial``) it sends after ``floor(T * speed)`` steps,
the setting FedNova's normalised averaging is made for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedlm.config.hetero import ResourcesConfig
from fedlm.stages import TensorDict


@dataclass(frozen=True)
class Resources:
    """What one client runs this round (after its profile and the time budget)."""

    rank: int | None
    steps: int
    batch_size: int
    seconds: float  # simulated time the steps take


def assign_profiles(cfg: ResourcesConfig, client_ids: list[str]) -> dict[str, int]:
    """Profile index of each client: cyclic over sorted ids, or a seeded draw with ``weights``."""
    if not cfg.profiles:
        return {}
    ids = sorted(client_ids)
    if cfg.assign == "cycle":
        return {cid: i % len(cfg.profiles) for i, cid in enumerate(ids)}
    w = np.asarray(cfg.weights if cfg.weights is not None else [1.0] * len(cfg.profiles), dtype=float)
    draw = np.random.default_rng(cfg.seed).choice(len(cfg.profiles), size=len(ids), p=w / w.sum())
    return {cid: int(k) for cid, k in zip(ids, draw, strict=True)}


def round_resources(cfg: ResourcesConfig, profile: int | None, *, steps: int, batch_size: int) -> Resources:
    """The client's rank, steps and batch size this round; ``steps == 0`` means it is dropped."""
    p = cfg.profiles[profile] if profile is not None else None
    steps = p.local_steps if p is not None and p.local_steps is not None else steps
    batch = p.batch_size if p is not None and p.batch_size is not None else batch_size
    speed = p.speed if p is not None else 1.0
    if cfg.time_budget is not None and steps / speed > cfg.time_budget:
        steps = math.floor(cfg.time_budget * speed) if cfg.straggler == "partial" else 0
    return Resources(rank=p.rank if p is not None else None, steps=steps, batch_size=batch, seconds=steps / speed)


def rank_masks(shapes: dict[str, tuple[int, ...]], rank: int) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the first ``rank`` LoRA components: rows of A (r, in), columns of B (out, r).

    A rank-``rank`` client inside the one rank-``r`` model (HetLoRA, Cho et al. 2024): the
    components it does not own are zero in both factors, so their gradients are zero
    too and the client trains exactly a rank-``rank`` adapter with the global scaling.
    """
    masks: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("lora_A.weight") and len(shape) == 2 and rank < shape[0]:
            m = torch.zeros(shape)
            m[:rank] = 1.0
            masks[name] = m
        elif name.endswith("lora_B.weight") and len(shape) == 2 and rank < shape[1]:
            m = torch.zeros(shape)
            m[:, :rank] = 1.0
            masks[name] = m
    return masks


def truncate_to_rank(state: TensorDict, masks: dict[str, torch.Tensor]) -> TensorDict:
    """The broadcast adapter as a lower-rank client sees it: components >= its rank zeroed."""
    return {k: v * masks[k].to(v.dtype) if k in masks else v for k, v in state.items()}


__all__ = ["Resources", "assign_profiles", "rank_masks", "round_resources", "truncate_to_rank"]
