"""The contribution capability: who contributed what, each round (``explain.contribution``).

Each round, right after the server's intake (decode, validate), ``Contribution.after_intake``
rebuilds coalition models from the round's starting global tensors and the accepted
deltas (``fedlm.explain.coalitions``) and scores them on a server validation split:
utility = minus the mean validation loss (nats/token), so a positive contribution means
the client's update lowered the loss. With ``explain.keep_updates`` the same inputs are
saved as ``RUN_DIR/explain/round_NNNN.safetensors`` and ``fedlm explain contribution``
(:mod:`fedlm.commands.explain`) recomputes the contributions after the fact with any method.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, RoundNote
from fedlm.engine.checkpoint import ServerState
from fedlm.errors import ConfigError
from fedlm.eval.metrics import score_lm
from fedlm.explain.coalitions import round_contributions
from fedlm.explain.contribution import ContributionResult, cumulative, flag_negative
from fedlm.explain.store import STORE_DIR, save_round
from fedlm.models.adapters import AdaptedModel
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan, TensorDict


def validation_examples(config: ExperimentConfig, data: FederatedData) -> list:
    """The server's validation split: the first ``explain.validation_size`` pooled held-out
    examples of ``explain.validation_clients`` (all clients when unset), in client order."""
    ex = config.explain
    ids = ex.validation_clients if ex.validation_clients is not None else data.ids()
    unknown = sorted(set(ids) - set(data.clients))
    if unknown:
        raise ConfigError(
            f"explain.validation_clients names unknown clients {unknown}; known: {data.ids()[:10]}"
        )
    pooled = [e for cid in ids for e in data.clients[cid].heldout]
    if not pooled:
        raise ConfigError("the explain validation split is empty; the chosen clients hold no held-out examples")
    return pooled[: ex.validation_size]


def fedavg_weights(config: ExperimentConfig, updates: list[ClientUpdate]) -> dict[str, float]:
    """FedAvg weight per client, as ``federation.weighting`` sets it."""
    uniform = config.federation.weighting == "uniform"
    return {u.client_id: 1.0 if uniform else float(u.num_examples) for u in updates}


class Contribution(Capability):
    """Per-round contributions and the store of round updates.

    Args:
        config: the experiment (its ``explain`` section).
        model: the one base model; coalition models are loaded into it for scoring.
        data: the federated data (the validation split is drawn from its held-out part).
    """

    name = "contribution"

    @classmethod
    def build(cls, ctx: EngineContext) -> Contribution | None:
        ex = ctx.config.explain
        if ex.contribution == "off" and not ex.keep_updates:
            return None
        return cls(ctx.config, ctx.model, ctx.data)

    def __init__(self, config: ExperimentConfig, model: AdaptedModel, data: FederatedData) -> None:
        self.config = config
        self.model = model
        self.validation = validation_examples(config, data)
        self.store_dir: Path | None = None

    def open_run(self, run_dir: Path) -> None:
        """Save round updates under ``run_dir/explain`` (when ``explain.keep_updates``)."""
        if self.config.explain.keep_updates:
            self.store_dir = Path(run_dir) / STORE_DIR

    def after_intake(self, plan: RoundPlan, state: ServerState, value: CohortValue) -> RoundNote | None:
        """The accepted, decoded updates right after the server's intake: store and score them."""
        record = self.round(plan, state.global_state, value.updates)
        if record is None:
            return None
        seconds = record.pop("seconds")
        return RoundNote(record={"contribution": record}, seconds={"contribution": seconds})

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        rounds = [r for r in run.records if r.get("type") == "round"]
        return {"contribution": contribution_summary(rounds, negative_tol=self.config.explain.negative_tol)}

    def utility(self, state: TensorDict) -> float:
        """Minus the validation loss (nats/token) of the model with ``state`` loaded."""
        self.model.set_state(state)
        score = score_lm(self.model.model, self.validation, pad_id=self.model.tokenizer.pad_token_id,
                         batch_size=self.config.eval.batch_size)
        return -score.as_dict()["eval_loss"]

    def round(self, plan: RoundPlan, global_state: TensorDict, updates: list[ClientUpdate]) -> dict[str, Any] | None:
        """Store the round's updates (if asked) and return its contribution record (or None)."""
        tensors = {u.client_id: u.tensors for u in updates if u.tensors is not None}
        kept = [u for u in updates if u.client_id in tensors]
        weights = fedavg_weights(self.config, kept)
        if self.store_dir is not None:
            save_round(self.store_dir, plan.round, global_state, tensors, weights)
        method = self.config.explain.contribution
        if method == "off" or not tensors:
            return None
        return contribution_record(self, global_state, tensors, weights, method=method)


def contribution_record(run: Contribution, global_state: TensorDict, tensors: dict[str, TensorDict],
                        weights: dict[str, float], *, method: str) -> dict[str, Any]:
    """One round's contributions as a JSON-friendly record."""
    ex = run.config.explain
    t0 = time.perf_counter()
    result = round_contributions(
        global_state, tensors, weights, evaluate=run.utility, method=method,  # type: ignore[arg-type]
        epsilon=ex.gtg_epsilon, round_threshold=ex.gtg_round_threshold,
        max_permutations=ex.gtg_max_permutations, convergence_tol=ex.gtg_convergence_tol, seed=ex.seed,
    )
    return {
        **result_dict(result),
        "flagged": flag_negative(result.values, tol=ex.negative_tol),
        "seconds": time.perf_counter() - t0,  # moved to the round record's "seconds" in a run
    }


def result_dict(result: ContributionResult) -> dict[str, Any]:
    return {
        "method": result.method,
        "values": dict(sorted(result.values.items())),
        "evaluations": result.evaluations,
        "permutations": result.permutations,
        "converged": result.converged,
        "round_truncated": result.round_truncated,
    }


def contribution_summary(rounds: list[dict[str, Any]], *, negative_tol: float = 0.0) -> dict[str, Any] | None:
    """``summary.json``'s ``contribution``: per round, cumulative and the negative clients."""
    per_round = [dict(r["contribution"], round=r["round"]) for r in rounds if r.get("contribution")]
    if not per_round:
        return None
    results = [ContributionResult(values=r["values"], evaluations=r["evaluations"], method=r["method"]) for r in per_round]
    total = dict(sorted(cumulative(results).items()))
    return {
        "method": per_round[0]["method"],
        "utility": "minus validation loss (nats/token)",
        "cumulative": total,
        "negative": flag_negative(total, tol=negative_tol),
        "evaluations": sum(r["evaluations"] for r in per_round),
        "per_round": [{k: r[k] for k in ("round", "values", "flagged", "evaluations")} for r in per_round],
    }


__all__ = ["Contribution", "contribution_record", "contribution_summary", "validation_examples"]
