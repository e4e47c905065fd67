"""What a run's epsilon covers, what it does not, and what an audit says about it.

* :func:`caveats`: the settings and trust assumptions that limit the reported epsilon, in
  words, for ``summary.json["privacy"]["caveats"]`` and the report (the weakening ones
  are also warned about when the run is built, as Opacus does).
* :func:`audit_result`: the client-level one-run audit (Steinke, Nasr and Jagielski 2023)
  from the canary clients' scores, next to the reported epsilon; a lower bound above it
  means the mechanism does not give what is claimed (``flag``).
* :func:`epsilons_by_accountant`: the same Gaussian ledger under RDP and PLD.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from fedlm.privacy.accountant import PrivacyAccountant
from fedlm.privacy.one_run_audit import one_run_audit
from fedlm.privacy.sampling import dump_json, private_dir, write_private

AUDIT_FILE = "audit.json"  # in run_dir/private: the canaries' scores and inclusion bits


def caveats(config: Any, plan: Any, *, warn_only: bool = False) -> list[str]:
    """The limits of the run's epsilon, one sentence each (``warn_only``: those worth a warning)."""
    p, sa = config.privacy, config.secure_aggregation
    warn: list[str] = []
    note: list[str] = []
    if p.noise_seed is not None and p.enabled:
        warn.append(f"privacy.noise_seed={p.noise_seed} is set: whoever reads config.yaml can regenerate the noise "
                    "and subtract it, so the epsilon holds only while config.yaml is secret (simulations only)")
    if p.enabled and p.sampling_key == "public" and p.sampling != "none":
        warn.append("privacy.sampling_key=public: cohorts can be recomputed from config.yaml, so epsilon is "
                    "reported without amplification by sampling")
    if p.enabled and plan is not None and plan.margin > 0.1 * plan.clip_norm:
        warn.append(f"encoding (codec and SecAgg+ rounding) can grow a clipped update's norm by {plan.margin:.3g}, "
                    f"more than 10% of clip_norm={plan.clip_norm:g}; the noise covers it (sensitivity "
                    f"{plan.sensitivity:.4g}) at a cost in utility: use more SecAgg+ bits or a finer fixed_scale")
    if not p.enabled:
        return warn if warn_only else [*warn, "no client-level DP: the audit (if any) measures plain training"]
    if warn_only:
        return warn
    if p.mode == "central":
        note.append("central mode: the server is trusted with the unnoised sum"
                    + ("" if sa.enabled else " and with every client's update"))
    else:
        note.append("client noise: epsilon_server is the guarantee against the server, which chose the cohort and "
                    "so gets no amplification by sampling; it assumes at most floor((1 - min_honest_fraction) k) "
                    "of each cohort collude with it or withhold their share, and counts only the shares of "
                    "SecAgg+'s survivors")
    if p.mode == "distributed":
        note.append("mode distributed: SecAgg+ rounds the Gaussian-noised update; the accounted sensitivity "
                    "covers the rounding of the clipped signal, not the rounding's dependence on the noise; "
                    "ddgauss/skellam carry the proof")
    if p.sampling_key == "secret" and p.sampling != "none":
        note.append("amplification by sampling holds while private/ and checkpoints/ (the key, the cohorts) stay "
                    "secret; cohort members learn their SecAgg+ cohort")
    note.append("metrics.jsonl holds cohort means of per-client metrics (losses, norms), outside epsilon; the "
                "per-client values are in private/rounds.jsonl")
    return warn + note


def audit_result(scores: np.ndarray, included: np.ndarray, *, epsilon: float | None, delta: float,
                 confidence: float, run_dir: Path | None) -> dict[str, Any]:
    """The one-run audit of the run's canaries, beside the reported epsilon.

    Writes the scores and inclusion bits to ``run_dir/private/audit.json`` (mode 0600) so
    ``fedlm audit`` can recompute the bound; the bits are secret until the run is over.
    """
    res = one_run_audit(scores, included, delta=delta, confidence=confidence)
    flagged = epsilon is not None and res.epsilon_lower_bound > epsilon * (1 + 1e-9)
    out = {
        "method": "one-run audit (Steinke, Nasr and Jagielski 2023) with canary clients sending random "
                  "directions (Andrew et al. 2024); score = model change along each direction",
        "epsilon_lower_bound": res.epsilon_lower_bound, "confidence": confidence, "delta": delta,
        "epsilon_reported": epsilon, "canaries": res.m, "included": int(np.sum(included)),
        "k_plus": res.k_plus, "k_minus": res.k_minus, "guesses": res.guesses, "correct": res.correct,
        "flag": bool(flagged), "verdict": verdict(flagged, epsilon),
    }
    if run_dir is not None:
        write_private(private_dir(run_dir) / AUDIT_FILE, dump_json(
            {**out, "scores": [float(s) for s in scores], "included": [bool(b) for b in included]}).encode())
    return out


def verdict(flagged: bool, epsilon: float | None) -> str:
    """The audit's conclusion in words."""
    if flagged:
        return ("the audited lower bound exceeds the reported epsilon: the mechanism does not give the claimed "
                "guarantee (noise, clipping or accounting is broken)")
    if epsilon is None:
        return "no epsilon is claimed; the bound measures the run's empirical privacy"
    return "consistent: the audited lower bound is at most the reported epsilon"


def epsilons_by_accountant(acc: PrivacyAccountant) -> dict[str, float | None]:
    """The same ledger under RDP and PLD (PLD has no fixed-size sampling; RDP only for ``z = 0`` rounds)."""
    out: dict[str, float | None] = {}
    for kind in ("rdp", "pld"):
        if kind == "pld" and acc.sampling == "fixed":
            out[kind] = None
            continue
        other = PrivacyAccountant(
            kind, acc.sampling, noise_multiplier=acc.noise_multiplier, delta=acc.delta,
            sample_rate=acc.sample_rate if acc.sampling == "poisson" else None, cohort_size=acc.cohort_size,
            population=acc.population, clipped_count_stddev=acc.clipped_count_stddev,
        )
        other.load_state_dict({**other.state_dict(), "history": acc.state_dict()["history"]})
        eps = other.epsilon()
        out[kind] = eps if math.isfinite(eps) else None
    return out


__all__ = ["AUDIT_FILE", "audit_result", "caveats", "epsilons_by_accountant", "verdict"]
