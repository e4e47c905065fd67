"""The report's building blocks: PNG plots embedded as data URLs, and HTML tables."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def line_plot(title: str, ylabel: str, series: dict[str, tuple[list[float], list[float]]]) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    return png(fig)


def bar_plot(title: str, ylabel: str, labels: list[str], groups: dict[str, list[float]]) -> str:
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(labels) + 2), 3.4))
    width = 0.8 / max(1, len(groups))
    for g, (name, values) in enumerate(groups.items()):
        ax.bar([i + g * width for i in range(len(labels))], values, width=width, label=name)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return png(fig)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


__all__ = ["bar_plot", "line_plot", "plt", "png", "table"]
