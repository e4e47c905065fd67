"""The privacy audit inside a run: plant canaries in client data, measure after training.

* Before training, :func:`canary_hook` rewrites the chosen clients' raw rows: each of the
  ``audit.canaries`` secrets (Carlini et al. 2019) goes ``audit.canary_repeats`` times into
  its client's text as separate records (``fedlm.privacy.canaries.insert_canaries``).
* After training, :func:`audit_model` ranks every canary among ``audit.candidates`` random
  secrets (exposure) and runs the loss-based membership inference attack (Yeom et al.
  2018) on training examples of clients that took part vs held-out examples.
* ``fedlm audit RUN_DIR`` (:func:`fedlm.commands.audit.audit_run`) does the same on any finished run, rebuilding
  its data (and canaries) from the run's ``config.yaml``, and writes ``audit.json`` and
  ``summary.json["audit"]`` next to ``summary.json["privacy"]``.

Canary secrets depend only on ``audit.seed``; with ``canary_clients: auto`` the holders are
drawn by that seed from the clients the data builder keeps. Under client-level DP the
participants come from the run's private records (``private/rounds.jsonl``), since
``metrics.jsonl`` no longer lists cohorts.

The client-level one-run audit (``privacy.audit``, an audited epsilon) runs inside the DP
capability during training; :func:`client_level_audit` recomputes its bound from the
scores the run kept in ``private/audit.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, RowsHook
from fedlm.data.sources import Record
from fedlm.engine.capability import Capability, EngineContext, FinishedRun
from fedlm.privacy.audit import run_audit
from fedlm.privacy.canaries import Canary, choose_canary_clients, insert_canaries, make_canaries
from fedlm.privacy.disclosure import AUDIT_FILE, verdict
from fedlm.privacy.one_run_audit import one_run_audit
from fedlm.privacy.records import participants
from fedlm.privacy.sampling import PRIVATE_DIR, read_private

_OWNER = "__canary_owner__"  # temporary field while records are regrouped


def planted_canaries(config: ExperimentConfig) -> list[Canary]:
    """The canaries a run plants (a pure function of ``audit``)."""
    a = config.audit
    return make_canaries(a.canaries, seed=a.seed, template=a.template, alphabet=a.alphabet, length=a.secret_length)


def canary_clients(config: ExperimentConfig, client_ids: list[str]) -> list[str]:
    """The clients that hold canaries: the listed ones, or a seeded choice ('auto')."""
    a = config.audit
    if isinstance(a.canary_clients, list):
        a.check_clients(client_ids)
        return list(a.canary_clients)
    return choose_canary_clients(client_ids, n=a.canaries, seed=a.seed)


def canary_hook(config: ExperimentConfig) -> RowsHook | None:
    """A rows hook that plants the canaries (None when ``audit.canaries`` is 0)."""
    if not (config.audit.enabled and config.audit.canaries):
        return None
    text_field = config.data.text_field

    def hook(rows: dict[str, list[Record]]) -> dict[str, list[Record]]:
        holders = canary_clients(config, sorted(rows))
        flat = [{**r, _OWNER: cid} for cid, rs in rows.items() for r in rs]
        planted = insert_canaries(
            flat, planted_canaries(config), clients=holders, repeats=config.audit.canary_repeats,
            seed=config.audit.seed, client_field=_OWNER, text_field=text_field,
        )
        out: dict[str, list[Record]] = {cid: [] for cid in rows}
        for r in planted:
            cid = r.pop(_OWNER)
            out[cid].append(r)
        return out

    return hook


def audit_model(
    config: ExperimentConfig, model: Any, tokenizer: Any, data: FederatedData, *, participants: list[str] | None = None
) -> dict[str, Any]:
    """Exposure of every planted canary and the loss-based MIA AUC of ``model``.

    Args:
        config: the run's config (``audit`` section).
        model: the trained causal LM (base + final adapter).
        tokenizer: its tokenizer.
        data: the run's federated data, canaries included.
        participants: clients that trained in at least one round (members come from their
            training examples); None: every client.
    """
    a = config.audit
    ids = [c for c in (participants or data.ids()) if c in data.clients]
    members = [ex for cid in ids for ex in data.clients[cid].train]
    nonmembers = [ex for c in data.clients.values() for ex in c.heldout]
    canaries = planted_canaries(config) if a.canaries else []
    holders = canary_clients(config, data.ids()) if canaries else None
    result = run_audit(
        model, tokenizer, canaries=canaries, members=members, nonmembers=nonmembers,
        candidates=a.candidates, seed=a.seed, batch_size=a.batch_size, mia_examples=a.mia_examples,
        canary_clients=holders,
    )
    result["canary_repeats"] = a.canary_repeats if canaries else None
    result["canary_holders_participated"] = (
        sorted(set(holders) & set(participants)) if holders and participants is not None else None
    )
    return result


def participants_of(metrics_path: Path) -> list[str] | None:
    """Clients in any round's cohort (None if unknown).

    Under client-level DP the cohorts are kept out of ``metrics.jsonl``, in the run's
    ``private/rounds.jsonl`` (:mod:`fedlm.privacy.records`), which is read instead.
    """
    private = participants(metrics_path.parent)
    if private is not None:
        return private
    if not metrics_path.is_file():
        return None
    seen: set[str] = set()
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "round":
            seen.update(rec.get("cohort", []))
    return sorted(seen)


def client_level_audit(run_dir: Path, *, confidence: float | None = None) -> dict[str, Any] | None:
    """The run's client-level one-run audit (``privacy.audit``) recomputed from its private record.

    The canary clients' scores and inclusion bits are kept in ``private/audit.json``
    (mode 0600) at the end of the run; this recomputes the lower bound, at another
    ``confidence`` if given. None when the run had no such audit. ``fedlm audit`` can
    put the result under ``summary.json["privacy"]["audit"]``.
    """
    path = Path(run_dir) / PRIVATE_DIR / AUDIT_FILE
    if not path.is_file():
        return None
    saved = json.loads(read_private(path))
    conf = float(confidence if confidence is not None else saved["confidence"])
    res = one_run_audit(saved["scores"], saved["included"], delta=float(saved["delta"]), confidence=conf)
    eps = saved.get("epsilon_reported")
    flagged = eps is not None and res.epsilon_lower_bound > float(eps) * (1 + 1e-9)
    out = {k: v for k, v in saved.items() if k not in ("scores", "included")}
    out.update(epsilon_lower_bound=res.epsilon_lower_bound, confidence=conf, k_plus=res.k_plus,
               k_minus=res.k_minus, guesses=res.guesses, correct=res.correct, flag=bool(flagged),
               verdict=verdict(flagged, eps))
    return out


class CanaryAudit(Capability):
    """Canaries planted before training; exposure and membership inference after it."""

    name = "audit"

    @classmethod
    def build(cls, ctx: EngineContext) -> CanaryAudit | None:
        return cls(ctx) if ctx.config.audit.enabled else None

    @classmethod
    def rows_hook(cls, config: ExperimentConfig) -> RowsHook | None:
        return canary_hook(config)

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """Exposure and MIA AUC next to epsilon."""
        model = self.ctx.model
        return {"audit": audit_model(self.ctx.config, model.model, model.tokenizer, self.ctx.data,
                                     participants=participants_of(run.run_dir / "metrics.jsonl"))}


__all__ = ["CanaryAudit", "audit_model", "canary_hook", "client_level_audit", "participants_of", "planted_canaries"]
