"""Every benchmark's small version, one after another: ``python -m benchmarks --quick``.

Each module runs as ``python -m benchmarks.<name> --quick`` in its own process with one
torch thread, in the order below (cheapest first), under a progress bar. Their tables and
raw rows go to a scratch folder (``--out``, default a temporary one; ``FEDLM_BENCH_OUT``
for the modules), never into BENCHMARKS.md or ``benchmarks/results/``: a quick run checks
that every benchmark still runs and shows the small tables, it records nothing.

Prints one table: module, exit status, seconds, the 1-minute load average before it, and
the last JSON line the module printed (its result). Exits non-zero if any module failed.

    python -m benchmarks --quick [--only secagg,engines] [--out DIR] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks._record import ROOT, load_average

# Cheapest first, so a broken module shows up early.
MODULES = ("secagg", "sim_overhead", "sim_scale", "communication", "contribution", "algorithms",
           "shakespeare_fedavg", "pretraining", "personalization", "recipes", "robustness",
           "eval_harness", "engines", "privacy")


def last_json(text: str) -> dict | None:
    """The last line of ``text`` that parses as a JSON object (a module's result line)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_module(name: str, out: Path, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEDLM_BENCH_OUT": str(out), "HF_HUB_OFFLINE": "1"}
    load, t0 = load_average(), time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = 124, exc.stdout or "", f"timed out after {timeout:.0f} s"
        stdout = stdout if isinstance(stdout, str) else stdout.decode(errors="replace")
    (out / f"{name}.log").write_text(f"{stdout}\n--- stderr ---\n{stderr}")
    return {"module": name, "rc": rc, "seconds": time.perf_counter() - t0, "load_1min": load,
            "result": last_json(stdout), "error": stderr.strip().splitlines()[-1:] if rc else []}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", required=True, help="the small versions (the only mode)")
    ap.add_argument("--only", default="", help="comma-separated modules (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="scratch folder for tables, rows and logs")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per module")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(MODULES)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        ap.error(f"unknown modules {unknown}; choose from {', '.join(MODULES)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="fedlm-bench-quick-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task("benchmarks --quick", total=len(names))
        for name in names:
            bar.update(task, description=f"benchmarks.{name} --quick")
            rows.append(run_module(name, out, args.timeout))
            bar.advance(task)
    table = Table(title=f"python -m benchmarks --quick (tables and logs in {out})")
    for col in ("module", "rc", "seconds", "load", "result"):
        table.add_column(col, overflow="fold")
    for r in rows:
        shown = json.dumps(r["result"])[:160] if r["result"] else " ".join(r["error"])
        table.add_row(r["module"], str(r["rc"]), f"{r['seconds']:.0f}", f"{r['load_1min']:.2f}", shown)
    Console().print(table)
    total = sum(r["seconds"] for r in rows)
    (out / "quick.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps({"modules": len(rows), "failed": [r["module"] for r in rows if r["rc"]], "seconds": total}))
    return 1 if any(r["rc"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
