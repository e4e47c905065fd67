"""Shared plumbing of the benchmarks: the JSON line and the BENCHMARKS.md table."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finish(name: str, result: dict[str, Any], *, columns: list[str]) -> None:
    """Append a row to the benchmark's table in BENCHMARKS.md and print the JSON line."""
    result = {"benchmark": name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), **result}
    header = f"## {name}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# fedlm benchmarks\n"
    cols = ["date", *columns, "machine"]
    head = "| " + " | ".join(cols) + " |"
    row = "| " + " | ".join(_fmt(result.get(c)) for c in cols) + " |"
    if header not in text:
        text = text.rstrip() + f"\n\n{header}\n"
    start = text.index(header)
    end = text.find("\n## ", start + len(header))
    section = text[start:] if end == -1 else text[start:end]
    lines = section.rstrip("\n").split("\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("| ") and i + 1 < len(lines)
             and lines[i + 1].startswith("|---")]
    if heads and lines[heads[-1]] == head:  # the section's last table has these columns: add the row to it
        last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
        lines.insert(last_row + 1, row)
    else:  # none yet, or the columns changed: a new table, so no row lands under the wrong header
        lines += ["", head, "|" + "---|" * len(cols), row]
    new_section = "\n".join(lines) + "\n"
    text = text[:start] + new_section + ("" if end == -1 else text[end:])
    BENCHMARKS_MD.write_text(text)
    sys.stdout.write(json.dumps(result) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def append_table(name: str, rows: list[dict[str, Any]], *, columns: list[str], record: bool = True,
                 note: str | None = None) -> None:
    """Append a dated block of rows (a grid of one run) to the benchmark's section.

    Unlike :func:`finish` it prints nothing: the caller prints its own JSON line last.
    ``record=False`` (smoke runs) leaves BENCHMARKS.md alone.
    """
    if not record:
        return
    stamp = f"{datetime.now(timezone.utc).strftime('%Y-%m-%d')}, {machine()}"
    header = f"## {name}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# fedlm benchmarks\n"
    block = [f"Run of {stamp}" + (f": `{note}`" if note else ""), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    block += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    if header not in text:
        text = text.rstrip() + f"\n\n{header}\n"
    start = text.index(header)
    end = text.find("\n## ", start + len(header))
    end = len(text) if end == -1 else end
    text = text[:end].rstrip("\n") + "\n\n" + "\n".join(block) + "\n" + text[end:]
    BENCHMARKS_MD.write_text(text)
