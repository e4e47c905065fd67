"""The report's robustness section: the attack, the defence, what it stopped and who it flagged."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any


def robustness_section(summary: dict[str, Any], rounds: list[dict[str, Any]], *, table: Callable,
                       line_plot: Callable) -> str:
    """Attack and defence, attack success before and after, rejections by reason, flags per round.

    '' for a run with no defence configured, no attack and no rejected update.
    """
    r = summary.get("robustness") or {}
    aggregator, attack = r.get("aggregator", "fedavg"), r.get("attack", "none")
    if aggregator == "fedavg" and attack == "none" and not r.get("rejected"):
        return ""
    rows: list[list[Any]] = [["defence (aggregator)", aggregator], ["attack", attack],
                             ["malicious clients", ", ".join(r.get("malicious_clients") or []) or "-"]]
    if r.get("attack_success_rate") is not None:
        before = r.get("attack_success_rate_initial")
        rows.append(["attack success rate (before → after)",
                     f"{'-' if before is None else f'{before:.1%}'} → {r['attack_success_rate']:.1%}"])
    if r.get("target_on_clean_prompts") is not None:
        rows.append(["target answered on clean prompts", f"{r['target_on_clean_prompts']:.1%}"])
    clean = r.get("clean") or {}
    if clean and attack != "none":
        rows.append(["held-out perplexity of honest clients", f"{clean.get('perplexity', float('nan')):.3f}"])
    rows.append(["rejected updates", r.get("rejected", 0)])
    rows += [[f"  rejected: {why}", n] for why, n in sorted((r.get("by_reason") or {}).items())]
    flagged = r.get("flagged") or {}
    rows.append(["clients flagged by the aggregator (rounds)",
                 ", ".join(f"{c} ({n})" for c, n in sorted(flagged.items(), key=lambda kv: -kv[1])) or "-"])
    per_round = [[x["round"], len((x.get("audit") or {}).get("rejected") or x.get("rejected") or []),
                  ", ".join(_flagged(x, aggregator)) or "-"] for x in rounds]
    plot = line_plot("Rejected and flagged updates per round", "updates", {
        "rejected": ([p[0] for p in per_round], [p[1] for p in per_round]),
        "flagged": ([p[0] for p in per_round], [len(_flagged(x, aggregator)) for x in rounds]),
    }) if rounds else ""
    return ("<h2>Robustness</h2>" + table(["", "value"], rows)
            + (f"<div class='grid'><img src='{plot}' alt='rejected and flagged per round'></div>" if plot else "")
            + "<div class='scroll'>" + table(["round", "rejected", "flagged"], per_round) + "</div>"
            + f"<p class='muted'>{html.escape('flagged: ids the robust aggregator left out or marked that round')}</p>")


def _flagged(record: dict[str, Any], aggregator: str) -> list[str]:
    stage = (record.get("server") or {}).get(aggregator)
    return list(stage.get("flagged") or []) if isinstance(stage, dict) else []


__all__ = ["robustness_section"]
