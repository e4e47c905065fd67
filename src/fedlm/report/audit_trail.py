"""The round audit trail: what happened in each round, from the round's own record.

``round_audit(record)`` condenses a finished round record (after DP accounting) into the
``audit`` entry written to ``metrics.jsonl``: the cohort, who dropped out (and, with secure
aggregation, how many in each SecAgg+ phase), rejected updates and why, the DP clipped
fraction, the distribution of update norms, epsilon spent and bytes; the seconds per stage
stay in the record's ``seconds`` (so the rest of a record is reproducible) and the report
table shows them beside the audit.
It holds client ids, counts, norms and reasons only: nothing derived from raw text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AUDIT_HEADER = [
    "round", "cohort", "accepted", "dropped", "secagg dropouts", "rejected (why)", "clipped",
    "update norm min / median / max", "epsilon", "bytes up", "bytes down", "train s", "server s",
    "contribution s", "seconds per stage",
]


def norm_distribution(norms: list[float]) -> dict[str, float] | None:
    """Count, min, quartiles, max and mean of update L2 norms (None when there are none)."""
    if not norms:
        return None
    a = np.asarray(norms, dtype=float)
    q = np.quantile(a, [0.25, 0.5, 0.75])
    return {"n": int(a.size), "min": float(a.min()), "p25": float(q[0]), "median": float(q[1]),
            "p75": float(q[2]), "max": float(a.max()), "mean": float(a.mean())}


def _norms(record: dict[str, Any]) -> list[float]:
    server = record.get("server") or {}
    validated = (server.get("validate") or {}).get("norms")
    if isinstance(validated, dict) and validated:  # the server's view: decoded update norms
        return [float(v) for v in validated.values()]
    # secure aggregation: the server never sees one update; clients report their norm
    clients = record.get("clients") or {}
    return [float(m[k]) for m in clients.values() for k in m if k.endswith("pre_clip_norm")]


def _clipped_fraction(record: dict[str, Any]) -> float | None:
    flags = [float(m[k]) for m in (record.get("clients") or {}).values() for k in m if k == "dp_clip.clipped"]
    return float(np.mean(flags)) if flags else None


def round_audit(record: dict[str, Any]) -> dict[str, Any]:
    """The audit entry of one round record (see the module docstring)."""
    cohort = list(record.get("cohort", []))
    trained = set(record.get("clients") or {})
    rejected = [{k: x.get(k) for k in ("client_id", "reason", "detail", "side") if x.get(k) is not None}
                for x in record.get("rejected", [])]
    rejected_ids = {x["client_id"] for x in rejected}
    secagg = (record.get("server") or {}).get("secagg")
    return {
        "cohort": cohort,
        "accepted": record.get("accepted"),
        "dropped": [c for c in cohort if c not in trained and c not in rejected_ids],  # never sent an update
        "secagg_dropouts": dict(secagg.get("dropouts", {})) if isinstance(secagg, dict) else None,
        "secagg_aborted": bool(secagg.get("aborted")) if isinstance(secagg, dict) else None,
        "rejected": rejected,
        "clipped_fraction": _clipped_fraction(record),
        "update_norms": norm_distribution(_norms(record)),
        "epsilon": (record.get("privacy") or {}).get("epsilon"),
        "bytes_up": record.get("bytes_up"),
        "bytes_down": record.get("bytes_down"),
    }


def audit_rows(rounds: list[dict[str, Any]]) -> list[list[Any]]:
    """One report-table row per round record (``AUDIT_HEADER`` columns)."""
    rows = []
    for r in rounds:
        a = r.get("audit") or round_audit(r)
        n = a.get("update_norms")
        s = r.get("seconds") or {}  # per stage; kept beside the audit so metrics stay reproducible
        sa = a.get("secagg_dropouts")
        rows.append([
            r.get("round"), len(a["cohort"]), a.get("accepted"), ", ".join(a["dropped"]) or "-",
            "-" if sa is None else (", ".join(f"{p}: {k}" for p, k in sa.items() if k) or "0"),
            "; ".join(f"{x['client_id']}: {x['reason']}" for x in a["rejected"]) or "-",
            "-" if a.get("clipped_fraction") is None else f"{a['clipped_fraction']:.0%}",
            "-" if n is None else f"{n['min']:.3g} / {n['median']:.3g} / {n['max']:.3g}",
            "-" if a.get("epsilon") is None else f"{a['epsilon']:.3g}",
            a.get("bytes_up"), a.get("bytes_down"),
            _secs(s.get("train")), _secs(s.get("server")), _secs(s.get("contribution")),
            ", ".join(f"{k} {_secs(v)}" for k, v in (s.get("stages") or {}).items()) or "-",
        ])
    return rows


def _secs(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"
