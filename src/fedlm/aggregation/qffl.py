"""q-FFL aggregation: q-FedAvg (Li, Sanjabi, Beirami and Smith 2020, "Fair Resource
Allocation in Federated Learning", Algorithm 2).

q-FFL minimises ``sum_k p_k F_k^(q+1) / (q+1)``: the larger ``q``, the more weight the
clients with a high loss get. Each client sends its delta ``d_k = w_k - w`` and its loss
``F_k`` at the broadcast model ``w`` (``metrics["loss_at_broadcast"]``). With ``L`` the
Lipschitz estimate (the paper sets ``L = 1/eta``, the inverse local learning rate),
``Dw_k = -L d_k`` and the server step is::

    step = -sum_k p_k F_k^q Dw_k / sum_k p_k (q F_k^(q-1) ||Dw_k||^2 + L F_k^q)
         =  sum_k p_k F_k^q d_k / sum_k p_k (q F_k^(q-1) L ||d_k||^2 + F_k^q)

``p_k`` are FedAvg's weights (examples or uniform). With ``q = 0`` the step is
``sum_k p_k d_k / sum_k p_k``: FedAvg's weighted mean, exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar

from fedlm.aggregation.fedavg import WeightedMean, weighted_mean
from fedlm.errors import ConfigError, FedlmError
from fedlm.stages import CohortValue, RoundPlan, TensorDict

LOSS_KEY = "loss_at_broadcast"  # ClientUpdate.metrics: F_k, mean loss (nats/token) at the broadcast model


def qffl_step(deltas: list[TensorDict], losses: list[float], weights: list[float], *, q: float,
              lipschitz: float) -> tuple[TensorDict, dict[str, Any]]:
    """The q-FedAvg server step from the clients' deltas and losses (float32 out).

    Returns:
        The step by tensor name, and metrics: each client's effective weight (its share of
        the numerator, summing to ``sum p_k F_k^q / denominator``) and the denominator.
    """
    if not deltas:
        raise FedlmError("cannot aggregate zero updates")
    if any(f <= 0 for f in losses):
        raise FedlmError(f"q-FFL needs positive client losses, got {losses}")
    num_w, den = [], 0.0
    for d, f, p in zip(deltas, losses, weights):
        sq = sum(float(t.double().pow(2).sum()) for t in d.values())  # ||d_k||^2
        fq = f ** q
        num_w.append(p * fq)
        den += p * ((q * f ** (q - 1) * lipschitz * sq if q > 0 else 0.0) + fq)
    if den <= 0:
        raise FedlmError(f"q-FFL denominator is {den}; check the client weights {weights}")
    scale = sum(num_w) / den  # 1 exactly when q = 0: the step is FedAvg's mean
    mean = weighted_mean(deltas, num_w)  # sum p_k F_k^q d_k / sum p_k F_k^q
    out = {k: v if scale == 1.0 else v * scale for k, v in mean.items()}
    return out, {"denominator": den, "weights": [w / den for w in num_w]}


class QFFLMean(WeightedMean):
    """Server stage: q-FedAvg's step in place of the mean.

    Args:
        q: fairness exponent, ``q >= 0`` (0 is FedAvg).
        lipschitz: ``L``; None uses ``1 / plan.lr`` as the paper does.
        weighting: ``p_k`` as in FedAvg ("examples" or "uniform").
    """

    name: ClassVar[str] = "qffl"
    kind: ClassVar[str] = "aggregate"

    def __init__(self, *, q: float, lipschitz: float | None = None, weighting: str = "examples") -> None:
        super().__init__(weighting=weighting)
        if q < 0:
            raise ConfigError(f"fairness.qffl_q must be >= 0, got {q}")
        self.q, self.lipschitz = q, lipschitz

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        updates, rejected = [], list(value.rejected)
        for u in value.updates:
            if u.tensors is None:
                continue
            loss = u.metrics.get(LOSS_KEY)
            if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and loss >= 0:
                updates.append(u)
            else:  # a client's own report: hostile until checked, and q-FFL weighs by it
                rejected.append({"client_id": u.client_id, "reason": "bad_metric",
                                 "detail": f"metrics[{LOSS_KEY!r}] must be a finite loss >= 0, got {str(loss)[:40]}"})
        value = replace(value, updates=updates, rejected=rejected)
        if not updates:
            return state, replace(value, aggregate=None), {"clients": 0, "q": self.q}
        losses = [float(u.metrics[LOSS_KEY]) for u in updates]
        step, info = qffl_step([u.tensors for u in updates], losses, self.weights(updates), q=self.q,
                               lipschitz=self.lipschitz or 1.0 / plan.lr)
        value.aggregate = step
        return state, value, {"clients": len(updates), "q": self.q, "losses": dict(zip([u.client_id for u in updates], losses)),
                              "weights": dict(zip([u.client_id for u in updates], info["weights"])),
                              "denominator": info["denominator"]}


__all__ = ["LOSS_KEY", "QFFLMean", "qffl_step"]
