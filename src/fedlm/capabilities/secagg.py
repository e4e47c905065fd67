"""The secure-aggregation capability: one SecAgg+ session per round.

The protocol (``fedlm.privacy.secagg``) is interactive across the cohort, so a round is
split where the training loop needs it (DESIGN.md's picture, left to right):

1. ``extend_plan`` runs the key phases before local training and puts the round's
   :class:`~fedlm.privacy.secagg.session.SecAggSession` in the plan's
   :class:`~fedlm.privacy.secagg.stages.SecAggRound`; clients that dropped there do not
   train (``will_train``).
2. :class:`MaskStage` (client, last): takes whatever tensors arrive (after clip, noise
   share and a linear codec, whose payload it decodes), checks the update the way the
   server would have (finite, ``federation.max_update_norm``), folds the integer weight
   in, quantises and masks. The masked vector's bytes become ``update.payload``, so they
   are what ``bytes_up`` counts.
3. :class:`UnmaskStage` (server, first, in place of decode -> validate): collects the
   masked vectors, has the survivors unmask, and replaces the cohort's updates by ONE
   update holding the weighted sum ``sum_i w_i x_i`` with ``num_examples = sum_i w_i``.
   Below threshold the round is skipped: no update is left, nothing is revealed, the
   figures are logged and the run goes on with the next round.
4. :class:`SumValidate` checks the sum's names, shapes and finiteness, and
   :class:`SumMean` (the server's mean: nothing else can see single updates) divides it
   by the total weight or the plan's public ``FixedDenominator``, so the DP noise and
   server optimizer stages that follow work unchanged.

Step 1 is this module's (``SecAggRounds``, or a deployment's remote opener); steps 2 to 4
are the stages of :mod:`fedlm.privacy.secagg.stages`. Per-round figures are the unmask
stage's metrics in ``metrics.jsonl``; :func:`summarize` totals them for ``summary.json``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from fedlm.config.schema import ExperimentConfig
from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, MeanOffer, MeanRank
from fedlm.engine.checkpoint import ServerState
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.errors import SecAggAborted
from fedlm.privacy.secagg.session import SecAggSession
from fedlm.privacy.secagg.stages import (
    UNMASK_STAGE,
    ClientNormBound,
    MaskStage,
    SecAggRound,
    SumMean,
    SumValidate,
    UnmaskStage,
    client_weight,
    layout,
)
from fedlm.stages import RoundPlan, Stage

_SEED_TAG = 0x5EC


# -- the capability ----------------------------------------------------------------------
class SecureAggregation(Capability):
    """SecAgg+ in a run: the mask stage on clients, unmask -> sum on the server.

    Args:
        ctx: the run's config, model and data.
        opener: what opens each round's session (the in-process :class:`SecAggRounds`, or a
            deployment's opener that runs the key phases over the network).
    """

    name = "secure_aggregation"

    @classmethod
    def build(cls, ctx: EngineContext) -> SecureAggregation | None:
        return cls(ctx) if ctx.config.secure_aggregation.enabled else None

    def __init__(self, ctx: EngineContext, opener: Any = None) -> None:
        self.config = ctx.config
        self.shapes = ctx.model.shapes()  # the masked vector's layout: the shared tensors (see shapes_for)
        sizes = {c: len(d.train) for c, d in ctx.data.clients.items()}
        self.opener = opener or SecAggRounds(ctx.config, self.shapes, train_sizes=sizes)

    def use_opener(self, opener: Any) -> None:
        """Open sessions with ``opener`` from now on (a deployment's remote key phases)."""
        self.opener = opener

    def client_stages(self) -> list[Stage]:
        """Client-side norm bounding (what composes with SecAgg+ in place of a robust
        aggregator), and the mask stage last."""
        robust, out = self.config.robust, []
        if robust.aggregator == "norm_bound" and robust.norm_bound_client_side and robust.norm_bound:
            out.append(ClientNormBound(bound=float(robust.norm_bound)))
        return [*out, MaskStage(config=self.config, codec=_upload_codec(self.config))]

    def server_intake(self) -> list[Stage]:
        order = layout(self.shapes)
        unmask = UnmaskStage(shapes=order, max_bytes=self.config.federation.max_update_bytes, ring=ring_inputs(self.config))
        return [unmask, SumValidate(shapes=order)]

    def mean(self) -> MeanOffer:
        """The server holds only the sum: it divides it (nothing else can see single updates)."""
        return MeanOffer(SumMean(), MeanRank.VISIBILITY)

    def extend_plan(self, plan: RoundPlan, state: ServerState) -> RoundPlan:
        """Run the round's key phases before local training."""
        return self.opener.open(plan)

    def will_train(self, plan: RoundPlan, client_id: str) -> bool:
        """False when ``client_id`` dropped out of the key phases (it would mask nothing)."""
        field = plan.get(SecAggRound)
        return field is None or field.session.will_upload(client_id)

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        rounds = [r for r in run.records if r.get("type") == "round"]
        return {"secure_aggregation": summarize(rounds)}


def ring_inputs(config: ExperimentConfig) -> bool:
    """Whether clients mask ring elements (distributed DP's discrete mechanisms) instead of floats."""
    from fedlm.config.privacy import DISCRETE_MODES

    return config.privacy.enabled and config.privacy.mode in DISCRETE_MODES


def _upload_codec(config: ExperimentConfig):
    from fedlm.engine.pipelines import upload_codec

    return upload_codec(config)


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
        self.ring = ring_inputs(config)
        if self.ring:  # the mechanism's rotated vector: zero-padded to a power of two
            from fedlm.privacy.distributed.rotation import padded_dim

            self.vector_len = padded_dim(self.vector_len)
        heaviest = max(train_sizes.items(), key=lambda kv: kv[1], default=("", 1))
        if client_weight(config, heaviest[1]) > self.sa.max_weight:
            raise ConfigError(
                f"client {heaviest[0]!r} has {heaviest[1]} training examples, more than "
                f"secure_aggregation.max_weight={self.sa.max_weight}; its weight is folded into "
                "its masked vector, so raise max_weight (the modulus must still hold the sum) "
                "or set federation.weighting=uniform"
            )

    def open(self, plan: RoundPlan) -> RoundPlan:
        """Run the round's key phases; return ``plan`` with the session in its ``SecAggRound``."""
        seed = session_seed(self.config, plan.round)
        if len(plan.cohort) < 3:  # e.g. a small Poisson sample: no threshold >= 2 exists
            session = too_small(plan.cohort)
        else:
            session = SecAggSession(
                plan.cohort, vector_len=self.vector_len, config=self.sa, round_id=plan.round, seed=seed,
                integer_inputs=self.ring,
            )
            with contextlib.suppress(SecAggAborted):  # recorded in session.stats["aborted"]
                session.start()
        return plan.with_fields(SecAggRound(session))


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


__all__ = ["SecAggRounds", "SecureAggregation", "ring_inputs", "session_seed", "summarize", "too_small"]
