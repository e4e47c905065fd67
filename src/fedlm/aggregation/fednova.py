"""FedNova: normalised averaging for clients that ran different numbers of local steps.

Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization". Plain FedAvg weighs a client that ran ``τ_i`` steps ``τ_i``
times as much as its data share, so the fixed point drifts towards fast clients. With
plain local SGD (``a_i = τ_i``) FedNova averages the per-step directions and rescales::

    d_i   = Δ_i / τ_i                    (normalised update)
    τ_eff = Σ_i p_i τ_i                  (p_i: data weights, summing to 1)
    Δ     = τ_eff Σ_i p_i d_i

With equal ``τ_i`` this is FedAvg's mean. Each client reports its steps as
``ClientUpdate.metrics["local_steps"]`` (the plan's ``local_steps`` otherwise).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.errors import PipelineError, ProtocolError
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan, TensorDict

STEPS_KEY = "local_steps"  # ClientUpdate.metrics


def local_steps_of(update: ClientUpdate, plan: RoundPlan) -> int:
    steps = int(update.metrics.get(STEPS_KEY, plan.local_steps))
    if steps <= 0:
        raise ProtocolError(f"client {update.client_id} reports {steps} local steps; FedNova needs at least one")
    return steps


def fednova_mean(deltas: list[TensorDict], weights: list[float], steps: list[int]) -> tuple[TensorDict, float]:
    """``τ_eff Σ p_i Δ_i / τ_i`` in float64, returned as float32, and ``τ_eff``."""
    total = float(sum(weights))
    if not deltas or total <= 0:
        raise PipelineError(f"FedNova needs updates with positive weights, got {len(deltas)} and {weights}")
    p = [w / total for w in weights]
    tau_eff = sum(pi * t for pi, t in zip(p, steps, strict=True))
    out: TensorDict = {}
    for name in deltas[0]:
        acc = torch.zeros_like(deltas[0][name], dtype=torch.float64)
        for d, pi, t in zip(deltas, p, steps, strict=True):
            acc.add_(d[name].to(torch.float64), alpha=pi / t)
        out[name] = (tau_eff * acc).to(torch.float32)
    return out, tau_eff


class FedNovaMean(WeightedMean):
    """Server aggregate stage: FedNova's normalised mean (replaces FedAvg's mean)."""

    name: ClassVar[str] = "fednova"

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        updates = [u for u in value.updates if u.tensors is not None]
        weights = self.weights(updates)
        steps = [local_steps_of(u, plan) for u in updates]
        agg, tau_eff = fednova_mean([u.tensors for u in updates], weights, steps)  # type: ignore[misc]
        metrics = {"clients": len(updates), "tau_eff": tau_eff, "min_steps": min(steps), "max_steps": max(steps)}
        return state, dataclasses.replace(value, aggregate=agg), metrics


__all__ = ["STEPS_KEY", "FedNovaMean", "fednova_mean", "local_steps_of"]
