"""The default update-norm guard, and the finiteness check of an aggregate.

One finite update is enough to ruin a plain mean: a client that sends a delta of norm
1e30 moves the global model by 1e30 / n, and the next round is NaN. ``Validate`` rejects
non-finite values and, when ``federation.max_update_norm`` is set, norms above a fixed
bound; but a fixed bound must be tuned to the model and the learning rate, so the
default config has none. ``NormGuard`` needs no tuning: it rejects updates whose L2 norm
exceeds ``factor`` times the median norm of the round's valid updates.

Why the median: it is a robust statistic. If honest clients are a strict majority of
the updates, the (lower) median lies between the smallest and the largest honest norm,
whatever the others send, so the threshold is ``factor`` times an honest scale and a
blown-up update cannot raise it (unlike the mean, which one 1e30 update drags to 1e29).
This is the statistic FLAME (Nguyen et al., 2022, "FLAME: Taming Backdoors in Federated
Learning") clips to; here it only rejects gross outliers, so the factor is generous.

Why ``factor = 10``: honest norms in one cohort differ by the clients' data and local
steps, typically by well under 10x, while the updates that break a model are orders of
magnitude off. Raise it when clients run very different numbers of local steps
(resource profiles); a targeted attack that stays within 10x is the robust aggregators'
job (``robust``), not this guard's.

Why a floor (``min_threshold``): when every update is tiny (a learning-rate warm-up from
zero, a client with nothing to learn) the median is tiny too, and ``factor`` x median
would reject honest variation that cannot hurt anyone. An update no larger than the
floor is never rejected for its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedlm.errors import ConfigError
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

DEFAULT_FACTOR = 10.0
DEFAULT_MIN_THRESHOLD = 1e-3


def update_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors together, accumulated in float64 (inf or NaN when not finite)."""
    # hypot of per-tensor norms: no overflow on the way (a float's square can overflow).
    return math.hypot(*(float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) for t in tensors.values()))


def lower_median(values: list[float]) -> float:
    """The lower median: the ``(n - 1) // 2``-th smallest value (a value of the list, never a mean).

    With a strict honest majority it is never above the largest honest value, even for
    two updates: the median of [1, 1e30] would be 5e29.
    """
    if not values:
        raise ConfigError("lower_median needs at least one value")
    return sorted(values)[(len(values) - 1) // 2]


def norm_threshold(norms: list[float], *, factor: float, min_threshold: float) -> tuple[float, float]:
    """(median, threshold) for a round's finite norms: ``max(factor * median, min_threshold)``."""
    median = lower_median(norms)
    return median, max(factor * median, min_threshold)


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or inf (empty when all are finite)."""
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]


def aggregate_is_finite(aggregate: Mapping[str, torch.Tensor] | None) -> bool:
    """Whether a round's aggregate may be applied to the global model.

    The engine skips a round whose aggregate holds NaN or inf instead of applying it:
    a non-finite global model cannot recover. ``None`` (no aggregate) counts as finite,
    there is nothing to apply.
    """
    return aggregate is None or not non_finite_tensors(aggregate)


@dataclass(frozen=True)
class NormGuard:
    """Server stage (kind "validate"): reject updates far larger than the round's median.

    An update is rejected (reason "norm_outlier") when its L2 norm exceeds
    ``max(factor * lower_median(norms), min_threshold)``, the median taken over the
    round's updates with finite norms; an update with a non-finite norm is always
    rejected (reason "non_finite"). Run it after ``Validate``, on decoded updates. The
    module docstring says why the median, the factor and the floor.

    Metrics: ``median`` and ``threshold`` (None when no update has a finite norm),
    ``rejected`` (the rejected client ids, in cohort order).

    Args:
        factor: multiple of the median norm an update may reach (>= 1).
        min_threshold: norms up to this are never rejected for their size (>= 0).
    """

    name: ClassVar[str] = "norm_guard"
    kind: ClassVar[str] = "validate"
    factor: float = DEFAULT_FACTOR
    min_threshold: float = DEFAULT_MIN_THRESHOLD

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not (
            math.isfinite(self.factor) and self.factor >= 1
        ):
            raise ConfigError(f"NormGuard factor={self.factor!r} must be a finite number >= 1, e.g. 10")
        if isinstance(self.min_threshold, bool) or not isinstance(self.min_threshold, (int, float)) or not (
            math.isfinite(self.min_threshold) and self.min_threshold >= 0
        ):
            raise ConfigError(f"NormGuard min_threshold={self.min_threshold!r} must be a finite number >= 0")

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        norms = [None if u.tensors is None else update_norm(u.tensors) for u in value.updates]
        finite = [n for n in norms if n is not None and math.isfinite(n)]
        median = threshold = None
        if finite:
            median, threshold = norm_threshold(finite, factor=self.factor, min_threshold=self.min_threshold)
        kept: list[ClientUpdate] = []
        rejected = list(value.rejected)
        dropped: list[str] = []
        for u, norm in zip(value.updates, norms):
            problem = self._problem(norm, median, threshold)
            if problem is None:
                kept.append(u)
            else:
                rejected.append({"client_id": u.client_id, "reason": problem[0], "detail": problem[1]})
                dropped.append(u.client_id)
        metrics = {"median": median, "threshold": threshold, "rejected": dropped}
        return state, replace(value, updates=kept, rejected=rejected), metrics

    def _problem(self, norm: float | None, median: float | None, threshold: float | None) -> tuple[str, str] | None:
        """(reason, detail) for an update of this norm, or None to keep it."""
        if norm is None:
            return "missing", "update carries no decoded tensors; run the guard after decode"
        if not math.isfinite(norm) or median is None or threshold is None:
            return "non_finite", f"the update's L2 norm is {norm}"
        if norm > threshold:
            return "norm_outlier", (
                f"L2 norm {norm:.4g} exceeds the threshold {threshold:.4g} = max({self.factor:g} x the round's "
                f"median norm {median:.4g}, {self.min_threshold:g})"
            )
        return None


__all__ = [
    "DEFAULT_FACTOR",
    "DEFAULT_MIN_THRESHOLD",
    "NormGuard",
    "aggregate_is_finite",
    "lower_median",
    "non_finite_tensors",
    "norm_threshold",
    "update_norm",
]
