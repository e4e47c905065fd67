"""FedAvg: the weighted mean of client deltas (McMahan et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedlm.errors import ConfigError, FedlmError
from fedlm.stages import ClientUpdate, CohortValue, PlanField, RoundPlan, TensorDict


@dataclass(frozen=True)
class FixedDenominator(PlanField):
    """A public number the round's mean divides the weighted sum by, instead of the
    realised total weight (client-level DP's expected cohort size or total weight: the
    realised one would depend on who took part)."""

    broadcast: ClassVar[bool] = False
    value: float


def weighted_mean(deltas: list[TensorDict], weights: list[float]) -> TensorDict:
    """sum_i w_i * delta_i / sum_i w_i, accumulated in float64, returned as float32.

    Raises:
        FedlmError: no deltas, or weights that do not sum to a positive number.
    """
    if not deltas:
        raise FedlmError("cannot average zero updates")
    total = float(sum(weights))
    if total <= 0:
        raise FedlmError(f"FedAvg weights must sum to a positive number, got {weights}")
    out: TensorDict = {}
    for name in deltas[0]:
        acc = torch.zeros_like(deltas[0][name], dtype=torch.float64)
        for delta, w in zip(deltas, weights):
            acc.add_(delta[name].to(torch.float64), alpha=w / total)
        out[name] = acc.to(torch.float32)
    return out


class WeightedMean:
    """Server stage (FedAvg's mean): set ``aggregate`` to the weighted mean of the valid updates.

    Args:
        weighting: "examples" weighs each client by its training examples;
            "uniform" gives every client the same weight.
    """

    name: ClassVar[str] = "mean"
    kind: ClassVar[str] = "aggregate"

    def __init__(self, *, weighting: str = "examples") -> None:
        if weighting not in ("examples", "uniform"):
            raise ConfigError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        self.weighting = weighting

    def init(self) -> None:
        return None

    def weights(self, updates: list[ClientUpdate]) -> list[float]:
        """One weight per update: its training examples, or 1 for uniform weighting."""
        return [float(u.num_examples) if self.weighting == "examples" else 1.0 for u in updates]

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        updates = [u for u in value.updates if u.tensors is not None]
        weights = self.weights(updates)
        value.aggregate = weighted_mean([u.tensors for u in updates], weights)  # type: ignore[misc]
        return state, value, {"clients": len(updates), "total_weight": sum(weights)}
