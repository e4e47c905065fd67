"""Client contributions in a run (``explain.contribution``) and after it (``fedlm explain``).

Each round, right after the server's intake (decode, validate), ``ContributionRun.round``
rebuilds coalition models from the round's starting global tensors and the accepted
deltas (``fedlm.explain.coalitions``) and scores them on a server validation split:
utility = minus the mean validation loss (nats/token), so a positive contribution means
the client's update lowered the loss. With ``explain.keep_updates`` the same inputs are
saved as ``RUN_DIR/explain/round_NNNN.safetensors`` and ``explain_run`` recomputes the
contributions after the fact with any method.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData
from fedlm.errors import ConfigError, FedlmError
from fedlm.eval.metrics import score_lm
from fedlm.explain.coalitions import round_contributions
from fedlm.explain.contribution import ContributionResult, cumulative, flag_negative
from fedlm.models.adapters import AdaptedModel
from fedlm.stages import ClientUpdate, RoundPlan, TensorDict

STORE_DIR = "explain"


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


class ContributionRun:
    """Per-round contributions and the store of round updates.

    Args:
        config: the experiment (its ``explain`` section).
        model: the one base model; coalition models are loaded into it for scoring.
        data: the federated data (the validation split is drawn from its held-out part).
    """

    def __init__(self, config: ExperimentConfig, model: AdaptedModel, data: FederatedData) -> None:
        self.config = config
        self.model = model
        self.validation = validation_examples(config, data)
        self.store_dir: Path | None = None

    def keep_in(self, run_dir: str | Path) -> None:
        """Save round updates under ``run_dir/explain`` (when ``explain.keep_updates``)."""
        if self.config.explain.keep_updates:
            self.store_dir = Path(run_dir) / STORE_DIR

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


def contribution_record(run: ContributionRun, global_state: TensorDict, tensors: dict[str, TensorDict],
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


# ---------------------------------------------------------------------- stored updates
def save_round(store: Path, round_: int, global_state: TensorDict, tensors: dict[str, TensorDict],
               weights: dict[str, float]) -> Path:
    """``store/round_NNNN.safetensors``: ``global/<name>`` and ``update/<i>/<name>`` tensors;
    the metadata maps ``i`` to the client id and holds the FedAvg weights."""
    store.mkdir(parents=True, exist_ok=True)
    ids = sorted(tensors)
    flat = {f"global/{k}": v.detach().contiguous().cpu() for k, v in global_state.items()}
    for i, cid in enumerate(ids):
        flat.update({f"update/{i}/{k}": v.detach().contiguous().cpu() for k, v in tensors[cid].items()})
    meta = {"round": str(round_), "clients": json.dumps(ids), "weights": json.dumps([weights[c] for c in ids])}
    path = store / f"round_{round_:04d}.safetensors"
    save_file(flat, str(path), metadata=meta)
    return path


def load_round(path: Path) -> tuple[int, TensorDict, dict[str, TensorDict], dict[str, float]]:
    """Inverse of ``save_round``: (round, global state, client -> delta, client -> weight)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    flat = load_file(str(path))
    ids = json.loads(meta["clients"])
    weights = dict(zip(ids, json.loads(meta["weights"]), strict=True))
    global_state = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("global/")}
    tensors: dict[str, TensorDict] = {cid: {} for cid in ids}
    for k, v in flat.items():
        if k.startswith("update/"):
            _, i, name = k.split("/", 2)
            tensors[ids[int(i)]][name] = v
    return int(meta["round"]), global_state, tensors, weights


@torch.no_grad()
def explain_run(run_dir: str | Path, *, method: str | None = None, write: bool = True) -> dict[str, Any]:
    """Contributions of a finished run, recomputed from its stored round updates.

    Args:
        run_dir: a run made with ``explain.keep_updates=true``.
        method: "gtg", "loo" or "exact" (default: the run's ``explain.contribution``, or gtg).
        write: save the result as ``run_dir/contribution_<method>.json`` (and, when the run
            measured none itself, as ``summary.json``'s ``contribution``, re-rendering the report).

    Raises:
        FedlmError: the run kept no round updates.
    """
    from fedlm.config.loader import load_config
    from fedlm.runtime.experiment import prepare

    run_dir = Path(run_dir)
    files = sorted((run_dir / STORE_DIR).glob("round_*.safetensors"))
    if not files:
        raise FedlmError(
            f"{run_dir / STORE_DIR} holds no round updates; rerun with --set explain.keep_updates=true"
        )
    config = load_config(run_dir / "config.yaml")
    method = method or (config.explain.contribution if config.explain.contribution != "off" else "gtg")
    if method not in ("gtg", "loo", "exact"):
        raise ConfigError(f"unknown contribution method {method!r}; choose 'gtg', 'loo' or 'exact'")
    model, data = prepare(config)
    run = ContributionRun(config, model, data)
    rounds = []
    for path in files:
        r, global_state, tensors, weights = load_round(path)
        rounds.append({"round": r, "contribution": contribution_record(run, global_state, tensors, weights, method=method)})
    out = contribution_summary(rounds, negative_tol=config.explain.negative_tol) or {}
    if write:
        (run_dir / f"contribution_{method}.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
        _into_summary(run_dir, out)
    return out


def _into_summary(run_dir: Path, result: dict[str, Any]) -> None:
    """A run without in-run contributions shows the recomputed ones in its summary and report."""
    path = run_dir / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("contribution"):
        return  # keep what the run measured; the recomputation is in contribution_<method>.json
    summary["contribution"] = result
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if (run_dir / "report.html").exists():
        from fedlm.report.html import write_report

        write_report(run_dir)


def build_contribution_run(config: ExperimentConfig, model: AdaptedModel, data: FederatedData) -> ContributionRun | None:
    """A ``ContributionRun`` when ``explain.contribution`` or ``explain.keep_updates`` is on."""
    ex = config.explain
    if ex.contribution == "off" and not ex.keep_updates:
        return None
    return ContributionRun(config, model, data)
