"""The robust-aggregation capability: a Byzantine-robust mean, and FLTrust's root update.

The aggregators are stages of :mod:`fedlm.aggregation.robust_stages`, named in
``robust.aggregator``. This module checks the cohort meets the aggregator's bound once,
offers the stage as the server's mean, and for FLTrust computes the server's own update
on its root data each round.

In simulation the server has no data of its own, so the root set is stood in for as in
the FLTrust paper's experiments: a uniform sample (``robust.fltrust_root_fraction``,
seeded by ``federation.seed``) of the honest clients' training examples, the clean
distribution the paper's server collects about 100 examples from. It never includes a
held-out example (evaluation scores those: a root set drawn from them would let the
server train on its own test rows) nor a row of a malicious client (a data attack may have
poisoned it).
"""

from __future__ import annotations

import math
import random
from typing import Any

from fedlm.aggregation.robust_stages import FLTrustRoot, build_robust_stage
from fedlm.attacks.stages import malicious_clients
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, MeanOffer, MeanRank
from fedlm.engine.simulation import planned_cohort_size
from fedlm.errors import ConfigError
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
    """FLTrust's root dataset: a small clean set the server owns (see the module docstring).

    Raises:
        ConfigError: no honest client has a training example to draw it from.
    """
    bad = malicious_clients(ctx.config.attack, sorted(ctx.data.clients))
    pooled = [ex for cid, client in sorted(ctx.data.clients.items()) if cid not in bad for ex in client.train]
    if not pooled:
        raise ConfigError("robust.aggregator=fltrust needs a root set, but no honest client has a training example; "
                          "use more data or another robust.aggregator")
    size = max(1, math.ceil(ctx.config.robust.fltrust_root_fraction * len(pooled)))
    return random.Random(f"fltrust-root/{ctx.config.federation.seed}").sample(pooled, size)


__all__ = ["ROOT_CLIENT", "RobustAggregation", "root_examples"]
