"""Per-client label histograms: the table of ``fedlm data inspect`` and the report's plot."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from fedlm.report.figures import plt, png, table


def label_table(label_counts: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the client x label count table (labels by total count, descending)."""
    totals: dict[str, int] = {}
    for counts in label_counts.values():
        for lab, n in counts.items():
            totals[lab] = totals.get(lab, 0) + int(n)
    labels = sorted(totals, key=lambda k: (-totals[k], k))
    rows = [[cid, *(int(counts.get(lab, 0)) for lab in labels), sum(counts.values())] for cid, counts in sorted(label_counts.items())]
    return ["client", *labels, "total"], rows


def label_plot(label_counts: Mapping[str, Mapping[str, int]]) -> str:
    """A stacked bar per client (share of each label) as an embedded PNG data URI."""

    header, rows = label_table(label_counts)
    labels = header[1:-1]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.3 * len(rows) + 2), 3.6))
    bottom = [0.0] * len(rows)
    cmap = plt.get_cmap("tab20")
    for j, lab in enumerate(labels):
        shares = [r[1 + j] / r[-1] if r[-1] else 0.0 for r in rows]
        ax.bar(range(len(rows)), shares, bottom=bottom, label=lab, color=cmap(j % 20), width=0.85)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r[0] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of examples")
    ax.set_title("Label mix per client")
    if len(labels) <= 20:
        ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    return png(fig)


def label_section(summary: Mapping[str, Any]) -> str:
    """The report's "Data" section, or "" when the run has no label field."""
    counts = (summary.get("data") or {}).get("label_counts") or {}
    if not counts:
        return ""

    header, rows = label_table(counts)
    tv = (summary.get("data") or {}).get("label_tv")
    note = f"<p class='muted'>mean total variation to the global label mix: {tv:.3f}</p>" if tv is not None else ""
    return (
        "<h2>Data: labels per client</h2>" + note
        + f"<div class='grid'><img src='{label_plot(counts)}' alt='{html.escape('label histogram')}'></div>"
        + table(header, rows)
    )


__all__ = ["label_plot", "label_section", "label_table"]
