"""The robust-aggregation capability: a Byzantine-robust mean, and FLTrust's root update.

The aggregators are stages of :mod:`fedlm.aggregation.robust_stages`, named in
``robust.aggregator``. This module checks the cohort meets the aggregator's bound once,
offers the stage as the server's mean, and for FLTrust computes the server's own update
on its root data each round (in simulation the root set is stood in for by the first
``robust.fltrust_root_fraction`` of the pooled held-out examples; the paper's server
collects about 100 clean examples).
"""

from __future__ import annotations

import math
from typing import Any

from fedlm.aggregation.robust_stages import FLTrustRoot, build_robust_stage
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, MeanOffer, MeanRank
from fedlm.engine.simulation import planned_cohort_size
from fedlm.stages import RoundPlan, Stage, TensorDict

ROOT_CLIENT = "__server_root__"  # the id the server's own update trains under (no profile, no state)


class RobustAggregation(Capability):
    """A robust aggregator in place of FedAvg's mean."""

    name = "robust"
    plan_fields = (FLTrustRoot,)

    @classmethod
    def build(cls, ctx: EngineContext) -> RobustAggregation | None:
        return cls(ctx) if ctx.config.robust.aggregator != "fedavg" else None

    def __init__(self, ctx: EngineContext) -> None:
        self.config = ctx.config
        self.config.robust.check_cohort(planned_cohort_size(ctx.config, len(ctx.client_ids)))
        self.stage: Stage = build_robust_stage(ctx.config.robust)  # type: ignore[assignment]
        self.root_examples = root_examples(ctx) if ctx.config.robust.aggregator == "fltrust" else []

    def mean(self) -> MeanOffer:
        return MeanOffer(self.stage, MeanRank.DEFENCE)

    def before_intake(self, engine: Any, plan: RoundPlan, received: TensorDict) -> RoundPlan:
        """FLTrust: the server's own update on its root data, from the same broadcast."""
        if not self.root_examples:
            return plan
        root, _ = engine.local_update(plan, ROOT_CLIENT, received, examples=self.root_examples)
        return plan.with_fields(FLTrustRoot(root.tensors))

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """How often each client was flagged by the aggregator, over the rounds."""
        flagged: dict[str, int] = {}
        for r in run.records:
            agg = (r.get("server") or {}).get(self.stage.name, {}) if r.get("type") == "round" else {}
            for cid in agg.get("flagged", []) if isinstance(agg, dict) else []:
                flagged[cid] = flagged.get(cid, 0) + 1
        return {"robustness": {"aggregator": self.config.robust.aggregator, "flagged": flagged}}


def root_examples(ctx: EngineContext) -> list:
    """FLTrust's root dataset: a small clean set the server owns (see the module docstring)."""
    pooled = [ex for c in ctx.data.clients.values() for ex in c.heldout]
    return pooled[: max(1, math.ceil(ctx.config.robust.fltrust_root_fraction * len(pooled)))]


__all__ = ["ROOT_CLIENT", "RobustAggregation", "root_examples"]
