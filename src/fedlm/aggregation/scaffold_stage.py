"""SCAFFOLD's server control variate as a server stage (Karimireddy et al. 2020, option II).

Runs after the aggregate stage and leaves the aggregate alone: from each decoded delta
``Δy_i``, its local steps ``K_i`` and the round's client lr ``eta`` it derives
``Δc_i = -c - Δy_i / (K_i eta)`` and updates ``c <- c + (1/N) Σ Δc_i`` (see
:mod:`fedlm.client.scaffold`). State: ``{"c": {name: tensor}}`` (empty = zeros), so the
server's variate is checkpointed with the other stage states. The runtime broadcasts ``c``
with the global adapter (and counts its bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fedlm.aggregation.fednova import local_steps_of
from fedlm.client.scaffold import control_delta, server_control_update
from fedlm.stages import CohortValue, GlobalAtStart, PlanField, RoundPlan, TensorDict


@dataclass(frozen=True)
class ScaffoldRound(PlanField):
    """SCAFFOLD's server variate ``c`` (empty = zeros), broadcast with the global adapter."""

    c: TensorDict


class ScaffoldControl:
    """Server stage keeping SCAFFOLD's ``c``."""

    name: ClassVar[str] = "scaffold"
    kind: ClassVar[str] = "aggregate"

    def init(self) -> dict[str, Any]:
        return {"c": {}}

    def apply(self, state: dict[str, Any], value: CohortValue, plan: RoundPlan) -> tuple[dict[str, Any], CohortValue, dict[str, Any]]:
        population = plan.require(GlobalAtStart, by="the scaffold stage").population
        c = state.get("c", {})
        updates = [u for u in value.updates if u.tensors is not None]
        deltas_c = [control_delta(c, u.tensors, steps=local_steps_of(u, plan), lr=plan.lr) for u in updates]  # type: ignore[arg-type]
        new_c = server_control_update(c, deltas_c, num_clients=int(population))
        norm = sum(float(t.double().square().sum()) for t in new_c.values()) ** 0.5
        return {"c": new_c}, value, {"clients": len(updates), "c_norm": norm}


__all__ = ["ScaffoldControl", "ScaffoldRound"]
