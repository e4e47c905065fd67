"""Secure aggregation in a run: the key phases that open one SecAgg+ session per round.

The protocol (``fedlm.privacy.secagg``) is interactive across the cohort, so a round is
split where the training loop needs it (DESIGN.md's picture, left to right):

1. :meth:`SecAggRounds.open` runs the key phases before local training and puts the
   round's :class:`~fedlm.privacy.secagg.session.SecAggSession` in
   ``plan.extra[SECAGG_KEY]``; clients that dropped there do not train
   (:func:`will_upload`).
2. :class:`MaskStage` (client, last): takes whatever tensors arrive (after clip, noise
   share and a linear codec, whose payload it decodes), checks the update the way the
   server would have (finite, ``federation.max_update_norm``), folds the integer weight
   in, quantises and masks. The masked vector's bytes become ``update.payload``, so they
   are what ``bytes_up`` counts.
3. :class:`UnmaskStage` (server, first): collects the masked vectors, has the survivors
   unmask, and replaces the cohort's updates by ONE update holding the weighted sum
   ``sum_i w_i x_i`` with ``num_examples = sum_i w_i`` (id :data:`SUM_CLIENT_ID`).
   Below threshold the round aborts: no update is left, nothing is revealed, the figures
   are logged and the run goes on with the next round.
4. :class:`SumValidate` checks the sum's names, shapes and finiteness, and
   :class:`SumMean` divides it by the total weight (or by DP's public denominator
   ``plan.extra["dp_denominator"]`` when client-level DP is on), so the DP noise and
   server optimizer stages that follow work unchanged.

Step 1 is this module's; steps 2 to 4 are the stages of :mod:`fedlm.runtime.secagg_stages`,
re-exported here so that a run imports secure aggregation from one place.

Per-round figures (cohort, survivors, dropouts, bytes and seconds per phase) are the
unmask stage's metrics in ``metrics.jsonl``; :func:`summarize` totals them for
``summary.json``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Any

import numpy as np

from fedlm.config.schema import ExperimentConfig
from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.errors import SecAggAborted
from fedlm.privacy.secagg.session import SecAggSession
from fedlm.runtime.secagg_stages import (
    CONTRIBUTORS_METRIC,
    SECAGG_KEY,
    SUM_CLIENT_ID,
    UNMASK_STAGE,
    ClientNormBound,
    MaskStage,
    SumMean,
    SumValidate,
    UnmaskStage,
    client_stages,
    client_weight,
    contributors,
    flatten,
    layout,
    server_stages,
    unflatten,
)
from fedlm.runtime.secagg_stages import round_figures as round_figures
from fedlm.stages import RoundPlan

_SEED_TAG = 0x5EC


# -- per-run driver ----------------------------------------------------------------------
class SecAggRounds:
    """Opens one SecAgg+ session per round for a run.

    Args:
        config: the experiment (``secure_aggregation.enabled`` must be true).
        shapes: the model's trainable tensor shapes (the masked vector's layout).
        train_sizes: client id -> training examples, to check weights fit ``max_weight``.

    Raises:
        ConfigError: a client's weight would exceed ``secure_aggregation.max_weight``.
    """

    def __init__(
        self, config: ExperimentConfig, shapes: dict[str, tuple[int, ...]], *, train_sizes: dict[str, int]
    ) -> None:
        self.config = config
        self.sa: SecAggConfig = config.secure_aggregation
        self.vector_len = sum(math.prod(s) for s in shapes.values())
        if self.vector_len < 1:
            raise ConfigError("secure aggregation needs at least one trainable parameter")
        heaviest = max(train_sizes.items(), key=lambda kv: kv[1], default=("", 1))
        if client_weight(config, heaviest[1]) > self.sa.max_weight:
            raise ConfigError(
                f"client {heaviest[0]!r} has {heaviest[1]} training examples, more than "
                f"secure_aggregation.max_weight={self.sa.max_weight}; its weight is folded into "
                "its masked vector, so raise max_weight (the modulus must still hold the sum) "
                "or set federation.weighting=uniform"
            )

    def open(self, plan: RoundPlan) -> RoundPlan:
        """Run the round's key phases; return ``plan`` with the session in ``plan.extra``."""
        seed = session_seed(self.config, plan.round)
        if len(plan.cohort) < 3:  # e.g. a small Poisson sample: no threshold >= 2 exists
            session = too_small(plan.cohort)
        else:
            session = SecAggSession(
                plan.cohort, vector_len=self.vector_len, config=self.sa, round_id=plan.round, seed=seed
            )
            with contextlib.suppress(SecAggAborted):  # recorded in session.stats["aborted"]
                session.start()
        return replace(plan, extra={**plan.extra, SECAGG_KEY: session})


def session_seed(config: ExperimentConfig, round_id: int) -> int:
    """The seed of round ``round_id``'s SecAgg+ session (graph and rounding noise).

    Derived from the config alone, so deployed clients derive their rounding noise
    exactly as the simulator's in-process clients do.
    """
    sa = config.secure_aggregation
    base = sa.seed if sa.seed is not None else config.federation.seed
    return int(np.random.SeedSequence([base, round_id, _SEED_TAG]).generate_state(1)[0])


def too_small(cohort: tuple[str, ...]) -> _AbortedSession:
    """The stand-in session of a cohort too small for SecAgg+ (it aborts at setup)."""
    return _AbortedSession(cohort, "below_threshold", f"a cohort of {len(cohort)} cannot run SecAgg+ (needs >= 3)")


class _AbortedSession:
    """Stand-in for a session that could not even start."""

    def __init__(self, cohort: tuple[str, ...], reason: str, detail: str) -> None:
        self.stats: dict[str, Any] = {
            "cohort_size": len(cohort),
            "survivors": 0,
            "phases": {},
            "rejected": [],
            "client_errors": [],
            "aborted": {"phase": "setup", "reason": reason, "detail": detail},
        }

    def will_upload(self, client_id: str) -> bool:
        return False


def will_upload(plan: RoundPlan, client_id: str) -> bool:
    """False when secure aggregation is on and ``client_id`` dropped out before masking."""
    session = plan.extra.get(SECAGG_KEY)
    return session is None or session.will_upload(client_id)


def aborted(intake_metrics: dict[str, Any]) -> bool:
    """Whether secure aggregation aborted the round (so it is skipped, never fatal)."""
    return bool((intake_metrics.get(UNMASK_STAGE) or {}).get("aborted"))


# -- records -----------------------------------------------------------------------------
def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``summary.json``'s ``secure_aggregation``: totals over the rounds' unmask metrics."""
    figs = [(r["round"], (r.get("server") or {}).get(UNMASK_STAGE)) for r in rounds]
    figs = [(n, f) for n, f in figs if isinstance(f, dict)]
    if not figs:
        return None
    phases: dict[str, dict[str, float]] = {}
    for _, f in figs:
        for p, ph in f.get("phases", {}).items():
            acc = phases.setdefault(p, {})
            for k, v in ph.items():
                if k == "client_seconds_max":
                    acc[k] = max(acc.get(k, 0.0), v)
                else:
                    acc[k] = acc.get(k, 0) + v
    return {
        "rounds": len(figs),
        "aborted_rounds": [n for n, f in figs if f.get("aborted")],
        "cohort": sum(f.get("cohort", 0) for _, f in figs),
        "survivors": sum(f.get("survivors", 0) for _, f in figs),
        "dropouts": {p: sum(f.get("dropouts", {}).get(p, 0) for _, f in figs) for p in PHASES},
        "bytes_up": sum(f.get("bytes_up", 0) for _, f in figs),
        "bytes_down": sum(f.get("bytes_down", 0) for _, f in figs),
        "seconds": {p: {k: v for k, v in ph.items() if "seconds" in k} for p, ph in phases.items()},
        "per_round": [
            {"round": n, "cohort": f.get("cohort"), "survivors": f.get("survivors"), "aborted": f.get("aborted"),
             "dropouts": f.get("dropouts"), "bytes_up": f.get("bytes_up"), "bytes_down": f.get("bytes_down")}
            for n, f in figs
        ],
    }


__all__ = [
    "CONTRIBUTORS_METRIC",
    "SECAGG_KEY",
    "SUM_CLIENT_ID",
    "ClientNormBound",
    "MaskStage",
    "SecAggRounds",
    "SumMean",
    "SumValidate",
    "UnmaskStage",
    "aborted",
    "client_stages",
    "contributors",
    "flatten",
    "layout",
    "server_stages",
    "session_seed",
    "summarize",
    "too_small",
    "unflatten",
    "will_upload",
]
