"""The end-of-run headline of each enabled capability, as (label, value) rows.

``fedlm run`` prints them under its table and the report could show them: epsilon and
delta, the attack's success rate, personal vs global, SecAgg+ survivors, the top and bottom
contributors. Read from ``summary.json`` alone, so any finished run can be summarised.
"""

from __future__ import annotations

from typing import Any


def headline_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for every capability the run used; [] for a plain FedAvg run."""
    rows: list[tuple[str, str]] = []
    p = summary.get("privacy") or {}
    if p.get("epsilon") is not None:
        rows.append(("privacy: epsilon (delta)", f"{p['epsilon']:.3g} ({p.get('delta'):g}), {p.get('accountant')}"
                     + (f", stopped: {p['stop_reason']}" if p.get("stop_reason") else "")))
        audit = p.get("audit") or {}
        if audit.get("epsilon_lower_bound") is not None:
            rows.append(("privacy: audited lower bound", f"{audit['epsilon_lower_bound']:.3g}"))
    r = summary.get("robustness") or {}
    if r.get("attack", "none") != "none" or r.get("aggregator", "fedavg") != "fedavg":
        asr = r.get("attack_success_rate")
        rows.append(("robustness", f"{r.get('aggregator', 'fedavg')} against {r.get('attack', 'none')}"
                     + (f", attack success {asr:.1%}" if asr is not None else "")
                     + f", {r.get('rejected', 0)} updates rejected"))
    elif r.get("rejected"):
        rows.append(("rejected updates", ", ".join(f"{k}: {n}" for k, n in sorted((r.get("by_reason") or {}).items()))))
    pers = summary.get("personal") or {}
    fair = pers.get("fairness") or {}
    if fair:
        g, own = fair.get("global", {}).get("perplexity", {}), fair.get("personal", {}).get("perplexity", {})
        rows.append((f"personal ({pers.get('method')}): perplexity mean / worst 10%",
                     f"{_f(own.get('mean'))} / {_f(own.get('worst_10pct'))} vs global "
                     f"{_f(g.get('mean'))} / {_f(g.get('worst_10pct'))}"))
    sa = summary.get("secure_aggregation") or {}
    if sa:
        rows.append(("secure aggregation: survivors / cohort",
                     f"{sa.get('survivors', 0)} / {sa.get('cohort', 0)} over {sa.get('rounds', 0)} rounds"
                     + (f", aborted rounds {sa['aborted_rounds']}" if sa.get("aborted_rounds") else "")))
    c = summary.get("contribution") or {}
    if c.get("cumulative"):
        ranked = sorted(c["cumulative"].items(), key=lambda kv: kv[1], reverse=True)
        rows.append((f"contribution ({c.get('method')}): top / bottom",
                     f"{ranked[0][0]} {ranked[0][1]:+.3g} / {ranked[-1][0]} {ranked[-1][1]:+.3g}"))
    if summary.get("stop_reason"):
        rows.append(("stopped early", str(summary["stop_reason"])))
    return rows


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


__all__ = ["headline_rows"]
