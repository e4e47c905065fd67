"""Fairness across clients: how evenly a model serves each client.

For per-client values ``x_1..x_n`` (e.g. held-out perplexity, lower is better):

* ``mean`` and ``std`` (population standard deviation, ``ddof = 0``);
* ``worst_10pct``: the mean of the worst ``ceil(0.1 n)`` clients (at least one), the
  figure q-FFL and Ditto report for the clients a federation serves worst;
* ``jain``: Jain's fairness index ``(sum x)^2 / (n sum x^2)`` (Jain, Chiu and Hawe 1984),
  1 when every client has the same value and ``1/n`` when one client has it all. It is
  scale-free, so it reads the same for perplexities and losses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def jain_index(values: list[float]) -> float:
    """``(sum x)^2 / (n sum x^2)``; NaN for no values or all zeros."""
    sq = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * sq) if values and sq > 0 else float("nan")


def fairness_stats(values: Mapping[str, float], *, lower_is_better: bool = True,
                   worst_fraction: float = 0.1) -> dict[str, Any]:
    """Mean, std, worst-10% mean, Jain's index and the worst clients of per-client values.

    Non-finite values (a client with no held-out tokens) are left out and counted in
    ``skipped``.
    """
    finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    xs = list(finite.values())
    if not xs:
        return {"n": 0, "mean": None, "std": None, "worst_10pct": None, "jain": None, "worst_clients": [],
                "skipped": len(values)}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    k = max(1, math.ceil(worst_fraction * len(xs)))
    order = sorted(finite, key=lambda c: finite[c], reverse=lower_is_better)  # worst first
    worst = order[:k]
    return {
        "n": len(xs),
        "mean": mean,
        "std": std,
        "worst_10pct": sum(finite[c] for c in worst) / k,
        "jain": jain_index(xs),
        "worst_clients": worst,
        "skipped": len(values) - len(xs),
    }


def client_fairness(clients: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Fairness of an eval record's per-client metrics: perplexity and loss (lower is better),
    token accuracy (higher is better)."""
    out: dict[str, Any] = {}
    for key, lower in (("perplexity", True), ("eval_loss", True), ("token_accuracy", False)):
        vals = {cid: m.get(key) for cid, m in clients.items() if m.get(key) is not None}
        if vals:
            out[key] = fairness_stats(vals, lower_is_better=lower)
    return out


__all__ = ["client_fairness", "fairness_stats", "jain_index"]
