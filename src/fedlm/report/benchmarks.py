"""The report's benchmark section: offline scores of the base and the final model.

``summary["benchmarks"]`` (and ``benchmarks_initial`` with ``eval_harness.initial``) maps a
benchmark (mmlu-medical, pubmedqa, qa) to its metrics: accuracy, macro F1, exact match,
ROUGE-L (fractions in [0, 1]) and ``count``, the items scored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def benchmark_section(summary: dict[str, Any], *, table: Callable[[list[str], list[list[Any]]], str]) -> str:
    """HTML for the benchmark scores ('' when the harness did not run)."""
    final = summary.get("benchmarks") or {}
    if not final:
        return ""
    initial = summary.get("benchmarks_initial") or {}
    rows: list[list[Any]] = []
    for name, metrics in sorted(final.items()):
        before = initial.get(name) or {}
        for key, value in sorted(metrics.items()):
            if key == "count" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            rows.append([name, key, _fmt(before.get(key)), _fmt(value), metrics.get("count")])
    return "<h2>Benchmarks</h2>" + table(["benchmark", "metric", "base model", "final model", "items"], rows)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


__all__ = ["benchmark_section"]
