"""Robust aggregators as server stages (kind "aggregate").

Each stage is a frozen dataclass of hyper-parameters wrapping one pure function of
``fedlm.aggregation.robust``. It reads the decoded ``tensors`` and ``num_examples`` of
``CohortValue.updates``, sets ``CohortValue.aggregate`` (a delta by parameter name) and
reports the client ids it flagged. Its state counts, per client id, the rounds in which
that client was flagged, so repeat offenders show up in the audit and resume is exact.

Each stage reads its hyper-parameters from a ``RobustConfig`` in ``from_config``;
``build_robust_stage`` looks the class up by name in ``fedlm.config.robust.AGGREGATORS``
(the single source of aggregator names) and calls it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedlm.aggregation import robust
from fedlm.config.robust import AGGREGATORS, RobustConfig, needs_individual_updates
from fedlm.errors import PipelineError
from fedlm.stages import CohortValue, PlanField, RoundPlan, Stage, TensorDict

__all__ = [
    "AGGREGATORS",
    "BulyanStage",
    "FLTrustRoot",
    "FLTrustStage",
    "FlameStage",
    "GeomedStage",
    "KrumStage",
    "MedianStage",
    "MultiKrumStage",
    "NormBoundStage",
    "TrimmedMeanStage",
    "build_robust_stage",
    "needs_individual_updates",
]



@dataclass(frozen=True)
class FLTrustRoot(PlanField):
    """FLTrust's root update: the server's own delta on its clean root data this round."""

    broadcast: ClassVar[bool] = False
    update: TensorDict

_Result = tuple[TensorDict, dict[str, Any]]

# Keys of a diagnostics dict that hold client indices rather than per-client values.
_INDEX_KEYS = ("flagged", "selected")


@dataclass(frozen=True)
class _RobustStage:
    """Shared plumbing: read the cohort, call ``_aggregate``, map indices to client ids."""

    kind: ClassVar[str] = "aggregate"
    name: ClassVar[str] = "robust"

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> _RobustStage:
        """The stage ``cfg`` describes (the base passes ``f`` when the stage has one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**({"f": cfg.num_byzantine} if "f" in names else {}))

    def init(self) -> dict[str, Any]:
        """State: ``{"flag_counts": {client_id: rounds flagged}}``."""
        return {"flag_counts": {}}

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> tuple[TensorDict, dict[str, Any]]:
        raise NotImplementedError

    def apply(
        self, state: dict[str, Any], value: CohortValue, plan: RoundPlan
    ) -> tuple[dict[str, Any], CohortValue, dict[str, Any]]:
        """Aggregate ``value.updates``; an empty cohort leaves ``aggregate`` as None."""
        updates = value.updates
        if not updates:
            empty = {"num_updates": 0, "flagged": [], "num_flagged": 0}
            return state, dataclasses.replace(value, aggregate=None), empty
        missing = [u.client_id for u in updates if u.tensors is None]
        if missing:
            raise PipelineError(
                f"aggregate stage {self.name!r} got updates without decoded tensors from "
                f"{missing}; put a decode stage before it"
            )
        tensors = [u.tensors for u in updates if u.tensors is not None]
        weights = [float(u.num_examples) for u in updates]
        aggregate, diag = self._aggregate(tensors, weights, plan)
        ids = [u.client_id for u in updates]
        metrics: dict[str, Any] = {"num_updates": len(updates)}
        for key, val in diag.items():
            if key in _INDEX_KEYS:
                metrics[key] = [ids[i] for i in val]
            elif isinstance(val, list):
                metrics[key] = dict(zip(ids, val))
            else:
                metrics[key] = val
        metrics["num_flagged"] = len(metrics["flagged"])
        counts = dict(state["flag_counts"])
        for cid in metrics["flagged"]:
            counts[cid] = counts.get(cid, 0) + 1
        return {"flag_counts": counts}, dataclasses.replace(value, aggregate=aggregate), metrics


@dataclass(frozen=True)
class MedianStage(_RobustStage):
    """Coordinate-wise median (Yin et al. 2018); see ``robust.coordinate_median``."""

    name: ClassVar[str] = "median"
    f: int = 0

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.coordinate_median(tensors, f=self.f)


@dataclass(frozen=True)
class TrimmedMeanStage(_RobustStage):
    """Coordinate-wise trimmed mean (Yin et al. 2018); see ``robust.trimmed_mean``."""

    name: ClassVar[str] = "trimmed_mean"
    trim_fraction: float = 0.1
    f: int = 0

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> TrimmedMeanStage:
        return cls(trim_fraction=cfg.trim_fraction, f=cfg.num_byzantine)

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.trimmed_mean(tensors, trim_fraction=self.trim_fraction, f=self.f)


@dataclass(frozen=True)
class KrumStage(_RobustStage):
    """Krum (Blanchard et al. 2017); see ``robust.krum``."""

    name: ClassVar[str] = "krum"
    f: int = 0

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.krum(tensors, f=self.f)


@dataclass(frozen=True)
class MultiKrumStage(_RobustStage):
    """Multi-Krum (Blanchard et al. 2017), mean weighted by num_examples.

    See ``robust.multi_krum``.
    """

    name: ClassVar[str] = "multi_krum"
    f: int = 0
    m: int | None = None

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> MultiKrumStage:
        return cls(f=cfg.num_byzantine, m=cfg.multi_krum_m)

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.multi_krum(tensors, weights, f=self.f, m=self.m)


@dataclass(frozen=True)
class BulyanStage(_RobustStage):
    """Bulyan (El Mhamdi et al. 2018); see ``robust.bulyan``."""

    name: ClassVar[str] = "bulyan"
    f: int = 0

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.bulyan(tensors, f=self.f)


@dataclass(frozen=True)
class GeomedStage(_RobustStage):
    """Geometric median by smoothed Weiszfeld, RFA (Pillutla et al. 2022), weighted."""

    name: ClassVar[str] = "geomed"
    f: int = 0
    max_iter: int = 100
    tol: float = 1e-6
    smoothing: float = 1e-6

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> GeomedStage:
        return cls(f=cfg.num_byzantine, max_iter=cfg.geomed_max_iter, tol=cfg.geomed_tol,
                   smoothing=cfg.geomed_smoothing)

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.geometric_median(
            tensors,
            weights,
            f=self.f,
            max_iter=self.max_iter,
            tol=self.tol,
            smoothing=self.smoothing,
        )


@dataclass(frozen=True)
class NormBoundStage(_RobustStage):
    """Norm bounding then weighted mean (Sun et al. 2019); see ``robust.norm_bound``.

    With ``client_side=True`` the clients clipped to ``bound`` before sending (so this
    composes with secure aggregation); the server only averages and flags any update
    it can see that is over the bound.
    """

    name: ClassVar[str] = "norm_bound"
    bound: float | None = None
    client_side: bool = False

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> NormBoundStage:
        return cls(bound=cfg.norm_bound, client_side=cfg.norm_bound_client_side)

    def __post_init__(self) -> None:
        if self.client_side and self.bound is None:
            raise PipelineError(
                "norm_bound with client_side=True needs a fixed bound; set robust.norm_bound"
            )

    @property
    def needs_individual_updates(self) -> bool:
        return not self.client_side

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        return robust.norm_bound(tensors, weights, bound=self.bound, clip=not self.client_side)


@dataclass(frozen=True)
class FLTrustStage(_RobustStage):
    """FLTrust (Cao et al. 2021); reads the root update from the plan's :class:`FLTrustRoot`."""

    name: ClassVar[str] = "fltrust"

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        root = plan.require(FLTrustRoot, by="fltrust (compute the root update before the aggregate stage)")
        return robust.fltrust(tensors, root.update)


@dataclass(frozen=True)
class FlameStage(_RobustStage):
    """FLAME (Nguyen et al. 2022); see ``robust.flame``.

    The noise generator is seeded from ``plan.seed`` (plus ``seed_offset``), so a resumed
    round draws the same noise and the stage needs no RNG state.
    """

    name: ClassVar[str] = "flame"
    f: int = 0
    noise_lambda: float = 0.001

    @classmethod
    def from_config(cls, cfg: RobustConfig) -> FlameStage:
        return cls(f=cfg.num_byzantine, noise_lambda=cfg.flame_noise_lambda)
    seed_offset: int = 0x464C414D  # "FLAM": keeps this stream apart from others seeded by plan.seed

    def _aggregate(
        self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan
    ) -> _Result:
        gen = torch.Generator().manual_seed((plan.seed + self.seed_offset) % (2**63))
        return robust.flame(
            tensors,
            weights,
            f=self.f,
            noise_lambda=self.noise_lambda,
            generator=gen,
        )


def build_robust_stage(cfg: RobustConfig) -> Stage | None:
    """The aggregate stage that ``cfg`` describes; None for "fedavg" (not a robust stage)."""
    if cfg.aggregator == "fedavg":
        return None
    return AGGREGATORS.factory(cfg.aggregator).from_config(cfg)
