"""The report's secure-aggregation section: cohort, survivors, dropouts, bytes, seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def secagg_section(summary: dict[str, Any], *, table: Callable[[list[str], list[list[Any]]], str]) -> str:
    """HTML for ``summary["secure_aggregation"]`` ('' when secure aggregation was off)."""
    sa = summary.get("secure_aggregation")
    if not sa:
        return ""
    rows: list[list[Any]] = [
        ["rounds (aborted)", f"{sa.get('rounds')} ({len(sa.get('aborted_rounds') or [])})"],
        ["clients sampled / in the sum", f"{sa.get('cohort')} / {sa.get('survivors')}"],
        ["protocol bytes up / down", f"{sa.get('bytes_up', 0):,} / {sa.get('bytes_down', 0):,}"],
    ]
    phases = sa.get("seconds") or {}
    for phase, n in (sa.get("dropouts") or {}).items():
        t = phases.get(phase) or {}
        rows.append([f"{phase}: dropouts, client s, server s",
                     f"{n}, {t.get('client_seconds', 0.0):.3f}, {t.get('server_seconds', 0.0):.3f}"])
    return "<h2>Secure aggregation</h2>" + table(["", "value"], rows)


__all__ = ["secagg_section"]
