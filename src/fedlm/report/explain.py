"""report.html sections of issue "explainability": contributions, the audit table, attribution.

The report's own helpers (``table``, ``bar_plot``, ``line_plot``) are passed in, so the
look stays the one of ``fedlm.report.html``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from fedlm.report.audit_trail import AUDIT_HEADER, audit_rows


def contribution_section(summary: dict[str, Any], *, table: Callable, bar_plot: Callable,
                         line_plot: Callable) -> str:
    """Cumulative contribution bars, per-round lines and a table; '' without contributions."""
    c = summary.get("contribution")
    if not c:
        return ""
    ids = sorted(c["cumulative"])
    bars = bar_plot(f"Client contribution ({c['method']}, cumulative)", "utility gain (nats/token)", ids,
                    {"cumulative": [c["cumulative"][i] for i in ids]})
    per_round = c.get("per_round", [])
    lines = line_plot("Contribution per round", "utility gain (nats/token)", {
        cid: ([p["round"] for p in per_round if cid in p["values"]],
              [p["values"][cid] for p in per_round if cid in p["values"]]) for cid in ids
    })
    negative = set(c.get("negative", []))
    rows = [[cid, c["cumulative"][cid], "negative" if cid in negative else "-",
             sum(1 for p in per_round if cid in p.get("flagged", []))] for cid in ids]
    note = (f"<p class='muted'>utility: {html.escape(str(c.get('utility', '')))}; "
            f"{c.get('evaluations', 0)} coalition evaluations in all</p>")
    return ("<h2>Client contribution</h2>" + note
            + f"<div class='grid'><img src='{bars}' alt='contribution bars'><img src='{lines}' alt='contribution per round'></div>"
            + table(["client", "cumulative", "flag", "rounds flagged"], rows))


def audit_section(rounds: list[dict[str, Any]], *, table: Callable) -> str:
    """The round audit table (one row per round)."""
    if not rounds:
        return ""
    return ("<h2>Round audit</h2><p class='muted'>cohort, dropouts, rejected updates and why, DP clipping, "
            "update norms, epsilon, bytes and seconds per stage; no client data</p>"
            + "<div class='scroll'>" + table(AUDIT_HEADER, audit_rows(rounds)) + "</div>")


def attribution_section(summary: dict[str, Any]) -> str:
    """The token-attribution heat map of ``fedlm explain tokens``, when one was asked for."""
    a = summary.get("attribution")
    if not a:
        return ""
    from fedlm.explain.tokens import Attribution, heatmap_fragment

    results = {k: Attribution(**v) for k, v in a["results"].items()}
    return "<h2>Answer attribution</h2>" + heatmap_fragment(a["prompt"], results)


def bias_section(summary: dict[str, Any], *, table: Callable) -> str:
    """Bias probe (``eval.bias_probe``): disparity per occupation before / after, per client."""
    b = summary.get("bias_probe")
    if not b:
        return ""
    before = (b.get("before") or {}).get("disparity", {})
    after = b["after"]["disparity"]
    rows = [[o, before.get(o, "-"), v] for o, v in after.items()]
    rows.append(["mean |disparity|", (b.get("before") or {}).get("mean_abs_disparity", "-"),
                 b["after"]["mean_abs_disparity"]])
    out = ("<h2>Bias probe</h2><p class='muted'>log-likelihood of "
           f"<code>{html.escape(b['after']['template'])}</code>: mean over female names minus mean over "
           "male names (nats)</p>" + table(["occupation", "before", "after"], rows))
    per_client = b.get("per_client_mean_abs_disparity")
    if per_client:
        out += table(["client (latest update alone)", "mean |disparity|"], [[c, v] for c, v in per_client.items()])
    return out
