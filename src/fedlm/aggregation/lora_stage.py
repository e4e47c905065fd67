"""The LoRA-aware aggregate stage: naive, exact (FedEx-LoRA or FLoRA + SVD) or FFA.

The server pipeline carries deltas (local - global). LoRA's update is a product, so
this stage rebuilds each client's full adapter ``global + delta_i``, aggregates the
adapters with :mod:`fedlm.aggregation.lora` and hands on ``new_global - global`` as the
aggregate, like any mean. The round plan's :class:`~fedlm.stages.GlobalAtStart` brings the
broadcast global adapter.

- ``naive``: the weighted mean of the deltas (identical to FedAvg's mean), i.e. A and B
  averaged separately; inexact.
- ``exact`` + ``fedex`` (FedEx-LoRA, Singhal et al. 2024): the naive adapter plus, per
  module, the residual ``s (Σ w_i B_i A_i - B̄ Ā)`` of shape (out, in). The residual is
  added to the frozen base weight on every party; the stage keeps the running sum in its
  state (``{"residual": {module: (out, in)}}``) so a checkpoint and a resume hold it, and
  the runtime folds it into the one base model and counts its broadcast bytes.
- ``exact`` + ``svd`` (FLoRA stacking, Wang et al. 2024, then FlexLoRA's truncated SVD,
  Bai et al. 2024): one rank-``r`` adapter, exact while the stacked rank fits ``r``.
- ``ffa`` (FFA-LoRA, Sun et al. 2024): A is frozen on every client and is not part of the
  trainable state at all, so updates carry only B and the mean of B is exact. The stage
  gets the fixed A (``frozen``) to measure that error like the others; an update that
  carries an A anyway is rejected.

Every round it logs, per adapted module, ``||Σ w_i s B_i A_i - ΔW_applied||_F /
||Σ w_i s B_i A_i||_F`` under ``error`` (with ``max_error`` and ``mean_error``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from fedlm.aggregation.fedavg import weighted_mean
from fedlm.aggregation.lora import (
    LoraAggregate,
    aggregate_fedex,
    aggregate_svd,
    aggregation_error,
    pair_lora_tensors,
)
from fedlm.errors import ConfigError, PipelineError, UpdateRejected
from fedlm.stages import CohortValue, GlobalAtStart, RoundPlan, TensorDict

METHODS = ("naive", "fedex", "svd", "ffa")


def short_name(prefix: str) -> str:
    """A module prefix without PEFT's wrapper path, for the round log."""
    for head in ("base_model.model.model.", "base_model.model."):
        if prefix.startswith(head):
            return prefix[len(head):]
    return prefix


def global_of(plan: RoundPlan, stage: str) -> TensorDict:
    return plan.require(GlobalAtStart, by=f"server stage {stage!r}").tensors


class LoraAggregateStage:
    """Server aggregate stage for LoRA adapters (see the module docstring).

    Args:
        method: "naive", "fedex", "svd" or "ffa".
        scaling: the adapter's ``alpha / r`` (one scaling: mixed client ranks live inside
            the one rank-``r`` model with its scaling).
        rank: target rank ``r`` of the global adapter (svd).
        weighting: "examples" or "uniform", as FedAvg's mean.
        log_error: compute the per-module aggregation error each round.
        frozen: ffa only: the fixed ``lora_A`` tensors by name (every party holds them).
    """

    name: ClassVar[str] = "lora"
    kind: ClassVar[str] = "aggregate"

    def __init__(
        self, method: str, *, scaling: float, rank: int, weighting: str = "examples", log_error: bool = True,
        frozen: TensorDict | None = None,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"LoRA aggregate method {method!r} is unknown; choose one of {METHODS}")
        if weighting not in ("examples", "uniform"):
            raise ConfigError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        self.method, self.scaling, self.rank = method, float(scaling), int(rank)
        self.weighting, self.log_error = weighting, log_error
        self.frozen = {k: v.float() for k, v in (frozen or {}).items()}
        if method == "ffa" and not self.frozen:
            raise ConfigError("LoRA aggregate method 'ffa' needs the frozen lora_A tensors (frozen=...)")

    def init(self) -> dict[str, Any]:
        """State: the running FedEx-LoRA residual per module (empty for other methods)."""
        return {"residual": {}}

    def apply(self, state: dict[str, Any], value: CohortValue, plan: RoundPlan) -> tuple[dict[str, Any], CohortValue, dict[str, Any]]:
        glob = global_of(plan, self.name)
        updates = [u for u in value.updates if u.tensors is not None]
        if not updates:
            raise PipelineError("LoRA aggregate stage got no updates; the round should have been skipped")
        weights = [float(u.num_examples) if self.weighting == "examples" else 1.0 for u in updates]
        deltas = [u.tensors for u in updates]
        for u in updates:
            moved = sorted(short_name(k) for k in self.frozen if k in u.tensors)
            if moved:
                raise UpdateRejected("ffa_a_changed", f"client {u.client_id} sent lora_A of {moved[:3]}; FFA-LoRA freezes A")
        layout = pair_lora_tensors({**self.frozen, **glob})
        full = [{**self.frozen, **{k: glob[k].float() + d[k].float() for k in glob}} for d in deltas]  # (client) full adapters
        residuals: dict[str, torch.Tensor] = {}
        if self.method in ("naive", "ffa"):
            step = weighted_mean(deltas, weights)  # A and B averaged separately (ffa: B alone)
            applied: LoraAggregate | TensorDict = {**self.frozen, **{k: glob[k].float() + step[k] for k in glob}}
        else:
            agg = (
                aggregate_fedex(full, weights, scaling=self.scaling)
                if self.method == "fedex"
                else aggregate_svd(full, weights, rank=self.rank, scaling=self.scaling)
            )
            residuals = agg.residuals
            step = {k: (agg.state[k].float() - glob[k].float()) for k in glob}
            applied = agg
        metrics: dict[str, Any] = {"clients": len(updates), "total_weight": sum(weights)}
        if self.log_error and layout.pairs:
            errors = aggregation_error(full, weights, applied, scaling=self.scaling)
            named = {short_name(p): e for p, e in errors.items()}
            metrics.update(error=named, max_error=max(named.values()), mean_error=sum(named.values()) / len(named))
        new_state = state
        if residuals:
            total = dict(state.get("residual", {}))
            for prefix, r in residuals.items():
                total[prefix] = total[prefix] + r if prefix in total else r.clone()
            new_state = {**state, "residual": total}
            metrics["residual_bytes"] = sum(r.numel() * 4 for r in residuals.values())
        return new_state, dataclasses.replace(value, aggregate=step), metrics


__all__ = ["LoraAggregateStage", "global_of", "short_name"]
