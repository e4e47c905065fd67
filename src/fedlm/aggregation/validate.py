"""Update validation: every decoded update is checked before it is aggregated.

A failing update is moved to ``CohortValue.rejected`` with the client id and a
short reason; the round goes on without it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

import torch

from fedlm.errors import UpdateRejected
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan


def check_update(
    update: ClientUpdate,
    plan: RoundPlan,
    *,
    shapes: dict[str, tuple[int, ...]],
    max_norm: float | None = None,
    max_bytes: int | None = None,
) -> float:
    """Raise UpdateRejected for the first problem found; return the update's L2 norm."""
    if not isinstance(update.client_id, str):
        raise UpdateRejected("bad_client", f"client id is a {type(update.client_id).__name__}, not a string")
    if update.client_id not in plan.cohort:
        raise UpdateRejected("not_in_cohort", f"client {update.client_id!r} was not sampled in round {plan.round}")
    if update.round != plan.round:
        raise UpdateRejected("wrong_round", f"update is for round {update.round}, the server is in round {plan.round}")
    # DecodeStage enforces the limit before decoding; this catches payloads that skipped it.
    if max_bytes is not None and update.payload is not None and len(update.payload) > max_bytes:
        raise UpdateRejected("too_large", f"payload of {len(update.payload)} bytes exceeds the limit of {max_bytes}")
    n = update.num_examples
    # An int64 at most (what the wire carries); a larger claimed weight would overflow the mean's float.
    if isinstance(n, bool) or not (isinstance(n, int) and 0 < n < 2**63):
        raise UpdateRejected("bad_weight", f"num_examples must be a positive int64, got {str(n)[:40]!r}")
    tensors = update.tensors
    if tensors is None:
        raise UpdateRejected("missing", "update carries no decoded tensors")
    if tensors.keys() != shapes.keys():
        extra, missing = sorted(set(tensors) - set(shapes))[:3], sorted(set(shapes) - set(tensors))[:3]
        raise UpdateRejected("names", f"tensor names differ from the model: unexpected {extra}, missing {missing}")
    sq = 0.0
    for name, t in tensors.items():
        if tuple(t.shape) != shapes[name]:
            raise UpdateRejected("shape", f"{name} has shape {tuple(t.shape)}, expected {shapes[name]}")
        if not t.is_floating_point():
            raise UpdateRejected("dtype", f"{name} has dtype {t.dtype}, expected a floating point tensor")
        if not bool(torch.isfinite(t).all()):
            raise UpdateRejected("non_finite", f"{name} contains NaN or infinite values")
        sq += float(t.double().pow(2).sum())
    norm = math.sqrt(sq)
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected("norm", f"L2 norm {norm:.4g} exceeds federation.max_update_norm={max_norm}")
    return norm


class Validate:
    """Server stage: drop invalid updates, recording who and why.

    Args:
        shapes: expected tensor name -> shape (the model's trainable tensors).
        max_norm: reject updates with a larger L2 norm (None: no limit).
        max_bytes: reject payloads larger than this (None: no limit).
    """

    name: ClassVar[str] = "validate"
    kind: ClassVar[str] = "validate"

    def __init__(self, shapes: dict[str, tuple[int, ...]], *, max_norm: float | None = None, max_bytes: int | None = None) -> None:
        self.shapes = dict(shapes)
        self.max_norm = max_norm
        self.max_bytes = max_bytes

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        kept, norms = [], {}
        rejected = list(value.rejected)
        seen: set[str] = set()
        for u in value.updates:
            try:
                if isinstance(u.client_id, str) and u.client_id in seen:
                    raise UpdateRejected("duplicate", f"a second update from {u.client_id!r} in round {plan.round}")
                norms[u.client_id] = check_update(u, plan, shapes=self.shapes, max_norm=self.max_norm, max_bytes=self.max_bytes)
                seen.add(u.client_id)
                kept.append(u)
            except UpdateRejected as exc:
                rejected.append({"client_id": u.client_id, "reason": exc.reason, "detail": exc.detail})
        metrics = {"accepted": len(kept), "rejected": len(rejected), "norms": norms}
        return state, replace(value, updates=kept, rejected=rejected), metrics
