"""report.html sections of personalisation and fairness: per-client bars and the figures.

The report's own helpers (``table``, ``bar_plot``) are passed in, so the look stays the
one of ``fedlm.report.html``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

_STATS = ("mean", "std", "worst_10pct", "jain")


def _row(label: str, stats: dict[str, Any] | None) -> list[Any]:
    stats = stats or {}
    return [label, *(stats.get(k) if stats.get(k) is not None else "-" for k in _STATS),
            ", ".join(stats.get("worst_clients", [])) or "-"]


def fairness_section(summary: dict[str, Any], *, table: Callable) -> str:
    """Mean, std, worst 10% and Jain's index of the final per-client metrics; '' without them."""
    f = summary.get("fairness")
    if not f:
        return ""
    rows = [_row(metric, f.get(metric)) for metric in ("perplexity", "eval_loss", "token_accuracy") if f.get(metric)]
    return ("<h2>Fairness across clients</h2><p class='muted'>final global model on each client's held-out data; "
            "worst 10%: mean of the worst ceil(n/10) clients; Jain's index (sum x)^2 / (n sum x^2), 1 = all equal</p>"
            + table(["metric", "mean", "std", "worst 10%", "Jain", "worst clients"], rows))


def _which(client: dict[str, Any]) -> str:
    """The table's 'personal model' cell: has one, and what its validation split chose."""
    if not client["has_personal"]:
        return "no (global)"
    choice = client.get("selection")
    if not choice:
        return "yes"
    steps = f", {choice['steps']} fine-tuning steps" if "steps" in choice else ""
    return f"{choice['chosen']}, chosen on validation{steps}"


def personal_section(summary: dict[str, Any], *, table: Callable, bar_plot: Callable) -> str:
    """Per-client held-out perplexity, global vs personal, as bars and a table; '' without personalisation."""
    p = summary.get("personal")
    if not p:
        return ""
    ids = sorted(p["clients"])
    glob = [p["clients"][c]["global"]["perplexity"] for c in ids]
    own = [p["clients"][c]["personal"]["perplexity"] for c in ids]
    bars = bar_plot(f"Held-out perplexity per client ({p['method']})", "perplexity", ids,
                    {"global": glob, "personal": own})
    rows = [[c, g, o, o - g, _which(p["clients"][c])] for c, g, o in zip(ids, glob, own)]
    fair = p["fairness"]
    stats = [_row("global", fair["global"].get("perplexity")), _row("personal", fair["personal"].get("perplexity"))]
    return (f"<h2>Personalisation</h2><p class='muted'>method {html.escape(str(p['method']))}: each client scored on "
            "its own held-out data with the global model and with its personal model (kept on the client, never "
            "sent)</p>"
            + f"<div class='grid'><img src='{bars}' alt='per-client perplexity, global vs personal'></div>"
            + table(["perplexity", "mean", "std", "worst 10%", "Jain", "worst clients"], stats)
            + table(["client", "global", "personal", "personal - global", "personal model"], rows))


__all__ = ["fairness_section", "personal_section"]
