"""Secure aggregation's pipeline stages: mask on the client, unmask and sum on the server.

They run inside a round that :class:`fedlm.capabilities.secagg.SecAggRounds` opened and
find its SecAgg+ session in the plan's :class:`SecAggRound` field. The client pipeline ends in
:class:`MaskStage` (after an optional :class:`ClientNormBound` clip, which stands in for a
server-side robust aggregator); the server pipeline starts with :class:`UnmaskStage`,
:class:`SumValidate` and :class:`SumMean`, which together yield the aggregate that the
mean stages would have, so DP noise and the server optimizer follow unchanged.

The masked vector is every tensor of the update flattened in sorted-name order
(:func:`layout`) into float32 of shape (L,), L = the number of trainable parameters;
client and server derive that order on their own. A client folds its integer weight
(:func:`client_weight`) into the vector, so the server only ever holds ``sum_i w_i x_i``
and ``sum_i w_i``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.aggregation.validate import check_update
from fedlm.config.schema import ExperimentConfig
from fedlm.errors import PipelineError, UpdateRejected
from fedlm.privacy.clipping import clip_update
from fedlm.privacy.secagg.errors import SecAggAborted
from fedlm.stages import (
    CONTRIBUTORS_METRIC,
    ClientUpdate,
    CohortValue,
    PlanField,
    RoundPlan,
    Stage,
    TensorDict,
    contributors,
)

SUM_CLIENT_ID = "secagg:sum"  # the one update the server holds after unmasking
UNMASK_STAGE = "secagg"
# An update whose only tensor has this name holds ring elements of Z_{2^m} (int64, shape
# (L,)): distributed DP's encoding, masked as it is and summed in the ring.
RING_KEY = "secagg:ring"


@dataclasses.dataclass(frozen=True)
class SecAggRound(PlanField):
    """The round's SecAgg+ session: the server's :class:`SecAggSession` (or a stand-in for a
    session that could not start), or on a deployed client the client's own mask state.

    Each side sets its own, so it never travels in a deployed plan.
    """

    broadcast: ClassVar[bool] = False
    session: Any


# -- vectors ---------------------------------------------------------------------------
def layout(shapes: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The masked vector's layout: tensor names in sorted order with their shapes.

    Accepts shapes or tensors; client and server derive the same order independently.
    """
    return {k: tuple(getattr(shapes[k], "shape", shapes[k])) for k in sorted(shapes)}


def flatten(tensors: TensorDict, shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """Concatenate tensors in ``shapes`` order into one float32 vector of shape (L,)."""
    missing = sorted(set(shapes) - set(tensors))
    if missing or len(tensors) != len(shapes):
        raise UpdateRejected(
            "names", f"update tensors differ from the model: missing {missing[:3]}"
        )
    parts = []
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise UpdateRejected("shape", f"{name} has shape {tuple(t.shape)}, expected {shape}")
        parts.append(t.detach().to("cpu", torch.float32).reshape(-1).numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def unflatten(vector: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> TensorDict:
    """Inverse of :func:`flatten`: float64 (L,) -> name -> float32 tensor of its shape."""
    out: TensorDict = {}
    pos = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = torch.from_numpy(np.ascontiguousarray(vector[pos : pos + n])).to(torch.float32).reshape(shape)
        pos += n
    return out


# -- weights -----------------------------------------------------------------------------
def client_weight(config: ExperimentConfig, num_examples: int) -> int:
    """The integer weight a client folds into its masked vector.

    With client-level DP it follows the DP weighting (1, or min(n, privacy.max_weight)),
    otherwise ``federation.weighting`` (n, or 1).
    """
    privacy = getattr(config, "privacy", None)
    if privacy is not None and privacy.enabled:
        if privacy.weighting == "capped":
            return max(1, int(min(num_examples, privacy.max_weight or num_examples)))
        return 1
    return int(num_examples) if config.federation.weighting == "examples" else 1


# -- stages ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClientNormBound:
    """Client stage: clip the update to ``bound`` (client-side norm bounding, Sun et al. 2019).

    What composes with secure aggregation in place of a server-side robust aggregator:
    ``robust.aggregator=norm_bound`` with ``robust.norm_bound_client_side=true``.
    """

    name: ClassVar[str] = "norm_bound_clip"
    kind: ClassVar[str] = "clip"
    bound: float

    def init(self) -> None:
        return None

    def apply(self, state: None, value: ClientUpdate, plan: RoundPlan) -> tuple[None, ClientUpdate, dict[str, Any]]:
        if value.tensors is None:
            raise PipelineError(f"{self.name} needs update.tensors; put it before any encode stage")
        clipped, norm = clip_update(value.tensors, self.bound)
        return state, replace(value, tensors=clipped), {"pre_clip_norm": norm, "clipped": float(norm > self.bound)}


@dataclasses.dataclass(frozen=True)
class MaskStage:
    """Client stage (kind "mask"): quantise, weight and mask the update with SecAgg+.

    Args:
        config: the experiment (weights, federation.max_update_norm).
        codec: the upload codec; when an encode stage ran, its payload is decoded first
            (a linear codec, so the sum of decoded payloads is what the server wants).

    Metrics: ``bytes`` (the masked upload), ``weight``, ``clipped_fraction`` (coordinates
    outside ``±secure_aggregation.clip_range``), ``norm``.
    """

    name: ClassVar[str] = "secagg_mask"
    kind: ClassVar[str] = "mask"
    config: ExperimentConfig
    codec: Any = None

    def init(self) -> None:
        return None

    def apply(self, state: None, value: ClientUpdate, plan: RoundPlan) -> tuple[None, ClientUpdate, dict[str, Any]]:
        session = plan.require(SecAggRound, by=self.name).session
        if not session.will_upload(value.client_id):
            raise UpdateRejected("secagg_dropped", "the client left the SecAgg+ round before masking")
        tensors = value.tensors
        if tensors is not None and set(tensors) == {RING_KEY}:  # already in the ring: mask as it is
            ring = tensors[RING_KEY].detach().to("cpu").numpy().astype(np.uint64)
            data = session.mask(value.client_id, ring, weight=1)
            if data is None:
                raise UpdateRejected("secagg_refused", "the client's SecAgg+ state machine refused to mask")
            return state, replace(value, tensors=None, payload=data), {"bytes": len(data), "weight": 1}
        if tensors is None:
            if value.payload is None or self.codec is None:
                raise PipelineError(f"{self.name} got an update with neither tensors nor a decodable payload")
            tensors = self.codec.decode(value.payload)
        vec = flatten(tensors, layout(tensors))
        if not np.isfinite(vec).all():
            raise UpdateRejected("non_finite", "the update contains NaN or infinite values; not masked")
        norm = float(np.linalg.norm(vec.astype(np.float64)))
        max_norm = self.config.federation.max_update_norm
        if max_norm is not None and norm > max_norm:  # the check the server can no longer make
            raise UpdateRejected("norm", f"L2 norm {norm:.4g} exceeds federation.max_update_norm={max_norm}")
        weight = client_weight(self.config, value.num_examples)
        clip = self.config.secure_aggregation.clip_range
        data = session.mask(value.client_id, vec, weight=weight)
        if data is None:
            reason = next((r for c, _, r in reversed(session.stats["client_errors"]) if c == value.client_id), "?")
            raise UpdateRejected(f"secagg_{reason}", "the client's SecAgg+ state machine refused to mask")
        metrics = {
            "bytes": len(data),
            "weight": weight,
            "clipped_fraction": float(np.count_nonzero(np.abs(vec) > clip)) / vec.size,
            "norm": norm,
        }
        return state, replace(value, tensors=None, payload=data), metrics


@dataclasses.dataclass(frozen=True)
class UnmaskStage:
    """Server stage (kind "unmask"): turn the masked uploads into one summed update.

    With ``ring`` (distributed DP) the summed update holds the sum in the ring under
    ``RING_KEY`` (int64, shape (L,)) for the mechanism's decode stage.

    Metrics: :func:`round_figures` of the session, plus ``aborted`` (bool).
    """

    name: ClassVar[str] = UNMASK_STAGE
    kind: ClassVar[str] = "unmask"
    shapes: dict[str, tuple[int, ...]]
    max_bytes: int | None = None
    ring: bool = False

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        session = plan.require(SecAggRound, by=self.name).session
        rejected = list(value.rejected)
        if "aborted" in session.stats:  # gave up in the key phases: nothing was uploaded
            rejected.extend(_refused(session.stats))
            return state, CohortValue(updates=[], rejected=rejected, skipped="secagg_aborted"), round_figures(session.stats)
        uploads = []
        for u in value.updates:
            if u.payload is None:
                rejected.append({"client_id": u.client_id, "reason": "missing_payload", "detail": "no masked input"})
            elif self.max_bytes is not None and len(u.payload) > self.max_bytes:
                rejected.append({"client_id": u.client_id, "reason": "too_large",
                                 "detail": f"masked input of {len(u.payload)} bytes exceeds {self.max_bytes}"})
            else:
                uploads.append(u.payload)
        try:
            result = session.finish(uploads)
        except SecAggAborted:
            return state, CohortValue(updates=[], rejected=rejected, skipped="secagg_aborted"), round_figures(session.stats)
        finally:
            rejected.extend(_refused(session.stats))
        if self.ring:
            total = {RING_KEY: torch.from_numpy(np.asarray(result.values).astype(np.int64))}
        else:
            total = unflatten(result.values, self.shapes)  # sum_i w_i x_i, float32 by name
        summed = ClientUpdate(
            client_id=SUM_CLIENT_ID,
            round=plan.round,
            num_examples=int(result.total_weight),
            tensors=total,
            metrics={CONTRIBUTORS_METRIC: len(result.survivors), "secagg/total_weight": result.total_weight},
        )
        return state, CohortValue(updates=[summed], rejected=rejected), round_figures(session.stats)


@dataclasses.dataclass(frozen=True)
class SumValidate:
    """Server stage (kind "validate"): names, shapes and finiteness of the secure sum.

    Per-client checks (norm, NaN) ran on the clients before masking; the masked input's
    size was checked by the protocol.
    """

    name: ClassVar[str] = "validate"
    kind: ClassVar[str] = "validate"
    shapes: dict[str, tuple[int, ...]]

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        kept = []
        as_sum = replace(plan, cohort=(SUM_CLIENT_ID,))
        for u in value.updates:
            try:
                check_update(u, as_sum, shapes=self.shapes)
                kept.append(u)
            except UpdateRejected as exc:
                value.rejected.append({"client_id": u.client_id, "reason": exc.reason, "detail": exc.detail})
        return state, replace(value, updates=kept), {"accepted": len(kept), "rejected": len(value.updates) - len(kept)}


@dataclasses.dataclass(frozen=True)
class SumMean:
    """Server stage (kind "aggregate"): the secure sum over the total weight.

    The divisor is the plan's :class:`FixedDenominator` when one is set (client-level DP's
    public denominator), else the realised total weight ``sum_i w_i``.
    """

    name: ClassVar[str] = "mean"
    kind: ClassVar[str] = "aggregate"

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        if not value.updates:
            return state, replace(value, aggregate=None), {"clients": 0, "total_weight": 0}
        total_weight = sum(u.num_examples for u in value.updates)
        fixed = plan.get(FixedDenominator)
        d = float(fixed.value if fixed is not None else total_weight)
        agg: TensorDict = {}
        for u in value.updates:
            for k, t in (u.tensors or {}).items():
                agg[k] = agg.get(k, torch.zeros_like(t, dtype=torch.float64)) + t.to(torch.float64)
        value.aggregate = {k: (v / d).to(torch.float32) for k, v in agg.items()}
        return state, value, {"clients": contributors(value), "total_weight": total_weight, "denominator": d}


def client_stages(config: ExperimentConfig, stages: list, *, codec: Any) -> list:
    """The client pipeline with secure aggregation: norm-bound clip before encode, mask last."""
    out = list(stages)
    robust = config.robust
    if robust.aggregator == "norm_bound" and robust.norm_bound_client_side and robust.norm_bound:
        at = next((i for i, s in enumerate(out) if s.kind in ("encode", "mask")), len(out))
        out.insert(at, ClientNormBound(bound=float(robust.norm_bound)))
    out.append(MaskStage(config=config, codec=codec))
    return out


def server_stages(config: ExperimentConfig, stages: list[Stage], *, shapes: dict[str, tuple[int, ...]]) -> list[Stage]:
    """The server pipeline with secure aggregation.

    Decode, per-update validation and the aggregate stage (weighted mean, DP mean or
    client-side norm bounding, which all need individual updates) give way to
    unmask -> validate the sum -> :class:`SumMean`; DP noise and the optimizer stay.
    """
    fed = config.federation
    kept = [s for s in stages if s.kind in ("noise", "optimize")]
    order = layout(shapes)
    head: list[Stage] = [UnmaskStage(shapes=order, max_bytes=fed.max_update_bytes), SumValidate(shapes=order), SumMean()]
    return head + kept


# -- records -----------------------------------------------------------------------------
def round_figures(stats: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly per-round figures of a session's stats."""
    phases = {
        p: {k: v for k, v in ph.items()} for p, ph in stats.get("phases", {}).items()
    }
    out = {
        "cohort": stats.get("cohort_size", 0),
        "survivors": stats.get("survivors", 0),
        "aborted": "aborted" in stats,
        "abort": stats.get("aborted"),
        "degree": stats.get("degree"),
        "threshold": stats.get("threshold"),
        "dropouts": {p: ph.get("dropouts", 0) for p, ph in phases.items()},
        "bytes_up": sum(ph.get("bytes_up", 0) for ph in phases.values()),
        "bytes_down": sum(ph.get("bytes_down", 0) for ph in phases.values()),
        "upload_expansion": stats.get("upload_expansion"),
        "client_errors": [list(e) for e in stats.get("client_errors", [])],
        "phases": phases,
    }
    return out


__all__ = [
    "RING_KEY",
    "SUM_CLIENT_ID",
    "UNMASK_STAGE",
    "ClientNormBound",
    "MaskStage",
    "SecAggRound",
    "SumMean",
    "SumValidate",
    "UnmaskStage",
    "client_stages",
    "client_weight",
    "flatten",
    "layout",
    "round_figures",
    "server_stages",
    "unflatten",
]


def _refused(stats: dict[str, Any]) -> list[dict[str, str]]:
    """The clients the SecAgg+ server refused, as the round's ``rejected`` entries."""
    return [{"client_id": c, "reason": f"secagg_{r}", "detail": "message refused by the SecAgg+ server"}
            for c, r in stats.get("rejected", [])]
