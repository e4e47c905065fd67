"""Secure aggregation's added cost per round: fedlm's SecAgg+ beside Flower 1.42's.

fedlm: one in-process :class:`~fedlm.privacy.secagg.session.SecAggSession` per round,
all four phases, every message encoded to bytes and decoded again; its cost is the wall
time of the whole round with every client and the server on this one process (the sum of
all client and server compute), minus plaintext aggregation of the same vectors (each
client serialises fp32, the server decodes and sums). ``critical_s`` is the added time
when clients run in parallel (slowest client per phase plus the server). Dropouts go
silent after the key exchange, before uploading (the costliest case for the server: it
rebuilds their pairwise masks from Shamir shares).

Flower: the same vectors through ``SecAggPlusWorkflow`` + ``secaggplus_mod`` in Flower's
simulation engine (Ray, loopback only) versus the plain ``DefaultWorkflow``, each in its
own process (``benchmarks._flower_secagg``), first round dropped as warm-up, with
Flower's settings num_shares=3 (each client has 2 neighbours), reconstruction_threshold=2.
fedlm is measured twice: at its default degree and threshold (complete graph up to 31
clients, 34 neighbours at n = 50, t a strict majority) and at Flower's graph
(``neighbours=2, threshold=2``), the like-for-like comparison. The Flower column is
skipped, saying so, when ``flwr`` is not installed (``pip install -e .[bench]``).

Targets: fedlm's added cost >= 5x smaller than Flower's at 1M values and n = 50; upload
expansion <= 1.5x fp32 at n = 100.

    python -m benchmarks.secagg [--quick] [--no-flower]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._record import BENCHMARKS_MD, finish, machine
from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg.session import SecAggSession

FLOWER_SHARES, FLOWER_THRESHOLD = 3, 2


def _vectors(n: int, length: int) -> list[np.ndarray]:
    """n client vectors; 4 distinct ones reused (masking cost does not depend on values)."""
    rng = np.random.default_rng(length)
    base = [rng.uniform(-0.5, 0.5, length).astype(np.float32) for _ in range(4)]
    return [base[i % 4] for i in range(n)]


def plaintext_round(vectors: list[np.ndarray]) -> float:
    """Seconds for clients to serialise fp32 and the server to decode and average."""
    t0 = time.perf_counter()
    payloads = [v.astype("<f4").tobytes() for v in vectors]
    acc = np.zeros(vectors[0].size, np.float64)
    for p in payloads:
        acc += np.frombuffer(p, dtype="<f4")
    acc /= len(payloads)
    return time.perf_counter() - t0


def secure_round(vectors: list[np.ndarray], config: SecAggConfig, *, seed: int) -> dict[str, Any]:
    """One SecAgg+ round; wall seconds, critical-path seconds and bytes."""
    ids = [f"c{i}" for i in range(len(vectors))]
    t0 = time.perf_counter()
    session = SecAggSession(ids, vector_len=vectors[0].size, config=config, seed=seed)
    session.start()
    uploads = [session.mask(c, v) for c, v in zip(ids, vectors) if session.will_upload(c)]
    result = session.finish(u for u in uploads if u is not None)
    wall = time.perf_counter() - t0
    ph = session.stats["phases"]
    n, length = len(vectors), vectors[0].size
    return {
        "wall_s": wall,
        "critical_s": sum(p["client_seconds_max"] + p["server_seconds"] for p in ph.values()),
        "survivors": len(result.survivors),
        "degree": session.stats["degree"],
        "threshold": session.stats["threshold"],
        "masked_expansion": session.stats["upload_expansion"],
        "upload_expansion": sum(p["bytes_up"] for p in ph.values()) / n / (4.0 * length),
        "download_per_client": sum(p["bytes_down"] for p in ph.values()) / n,
    }


def measure_fedlm(n: int, length: int, dropout: float, *, matched: bool, repeats: int) -> dict[str, Any]:
    vectors = _vectors(n, length)
    extra = {"neighbours": FLOWER_SHARES - 1, "threshold": FLOWER_THRESHOLD} if matched else {}
    cfg = SecAggConfig(enabled=True, phase_dropout={"masked_input": dropout} if dropout else {}, **extra)
    runs, plain = [], []
    for r in range(repeats):  # interleaved, so both see the same machine load
        plain.append(plaintext_round(vectors))
        runs.append(secure_round(vectors, cfg, seed=r))
    wall = statistics.median(x["wall_s"] for x in runs)
    base = statistics.median(plain)
    out = dict(runs[0])
    out.update(
        n=n, length=length, dropout=dropout, graph="flower" if matched else "default",
        plain_s=base, secure_s=wall, added_s=wall - base,
        critical_added_s=statistics.median(x["critical_s"] for x in runs) - base / n,
    )
    out.pop("wall_s")
    out.pop("critical_s")
    return out


def measure_flower(n: int, length: int, *, rounds: int) -> dict[str, Any] | None:
    """Flower round seconds with and without SecAgg+ (median over rounds after the first)."""
    med = {}
    for secagg in (False, True):
        cmd = [sys.executable, "-m", "benchmarks._flower_secagg", "--n", str(n), "--length", str(length),
               "--rounds", str(rounds), "--num-shares", str(FLOWER_SHARES), "--threshold", str(FLOWER_THRESHOLD)]
        cmd += ["--secagg"] if secagg else []
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                              cwd=Path(__file__).resolve().parents[1])
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.stderr.write(f"flower run failed (n={n}, L={length}, secagg={secagg}):\n{proc.stderr[-2000:]}\n")
            return None
        times = json.loads(lines[-1])["round_seconds"][1:]  # round 1 starts the Ray actors
        med[secagg] = statistics.median(times)
    return {"n": n, "length": length, "plain_s": med[False], "secure_s": med[True],
            "added_s": med[True] - med[False], "masked_expansion": 2.0}  # int64 masked values


def _append_grid(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Append the full grid under its own heading in BENCHMARKS.md (not a prefix of '## secagg')."""
    header = "## secure aggregation grid (benchmarks.secagg)"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# fedlm benchmarks\n"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = ["| " + " | ".join([date, *(_fmt(r.get(c)) for c in cols), machine()]) + " |" for r in rows]
    if header not in text:
        text = text.rstrip() + f"\n\n{header}\n\n| " + " | ".join(["date", *cols, "machine"]) + " |\n|" \
            + "---|" * (len(cols) + 2) + "\n"
    start = text.index(header)
    end = text.find("\n## ", start + len(header))
    section = text[start:] if end == -1 else text[start:end]
    section = section.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    BENCHMARKS_MD.write_text(text[:start] + section + ("" if end == -1 else text[end:]))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="n in {10, 50} at 1M values, 0 and 30%% dropout (plus fedlm alone at n = 100)")
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    ns = (10, 50) if args.quick else (10, 50, 100)
    lengths = (1_000_000,) if args.quick else (100_000, 1_000_000)
    dropouts = (0.0, 0.3) if args.quick else (0.0, 0.1, 0.3)
    repeats = 2 if args.quick else 3

    rows: list[dict[str, Any]] = []
    for length in lengths:
        for n in ns:
            for d in dropouts:
                rows.append(measure_fedlm(n, length, d, matched=False, repeats=repeats))
            rows.append(measure_fedlm(n, length, 0.0, matched=True, repeats=repeats))
            sys.stderr.write(f"fedlm n={n} L={length} done\n")
    if args.quick:  # the upload-expansion target is at n = 100
        rows.append(measure_fedlm(100, 1_000_000, 0.0, matched=False, repeats=1))

    flower: list[dict[str, Any]] = []
    have_flwr = importlib.util.find_spec("flwr") is not None
    if args.no_flower or not have_flwr:
        sys.stderr.write("Flower column skipped: " + ("--no-flower" if args.no_flower else
                         "flwr is not installed (pip install -e .[bench])") + "\n")
    else:
        for length in lengths:
            for n in ns:
                got = measure_flower(n, length, rounds=4)
                if got is not None:
                    flower.append(got)
                sys.stderr.write(f"flower n={n} L={length}: {got}\n")

    def fed(n, length, graph="default", d=0.0):
        return next((r for r in rows if (r["n"], r["length"], r["graph"], r["dropout"]) == (n, length, graph, d)), None)

    for f in flower:
        f["graph"], f["dropout"], f["system"] = "flower", 0.0, "flower"
        for graph in ("default", "flower"):
            mine = fed(f["n"], f["length"], graph)
            if mine is not None and mine["added_s"] > 0:
                f[f"speedup_{graph}"] = f["added_s"] / mine["added_s"]
    for r in rows:
        r["system"] = "fedlm"
    cols = ["system", "n", "length", "dropout", "graph", "degree", "threshold", "survivors", "plain_s",
            "secure_s", "added_s", "critical_added_s", "masked_expansion", "upload_expansion",
            "download_per_client", "speedup_default", "speedup_flower"]
    _append_grid(rows + flower, cols)

    at50 = next((f for f in flower if f["n"] == 50 and f["length"] == 1_000_000), None)
    big = max((r for r in rows if r["graph"] == "default" and r["dropout"] == 0.0), key=lambda r: (r["n"], r["length"]))
    headline = {
        "quick": args.quick,
        "fedlm_added_s_n50_1M_default": (fed(50, 1_000_000) or {}).get("added_s"),
        "fedlm_added_s_n50_1M_flower_graph": (fed(50, 1_000_000, "flower") or {}).get("added_s"),
        "flower_added_s_n50_1M": at50["added_s"] if at50 else None,
        "speedup_n50_1M_flower_graph": at50.get("speedup_flower") if at50 else None,
        "speedup_n50_1M_default_graph": at50.get("speedup_default") if at50 else None,
        "speedup_target": ">= 5",
        f"upload_expansion_n{big['n']}": big["upload_expansion"],
        f"masked_expansion_n{big['n']}": big["masked_expansion"],
        "expansion_target": "<= 1.5 at n=100",
        "flower": "measured" if flower else "skipped",
        "grid": rows + flower,
    }
    finish("secagg", headline, columns=[
        "quick", "fedlm_added_s_n50_1M_flower_graph", "fedlm_added_s_n50_1M_default", "flower_added_s_n50_1M",
        "speedup_n50_1M_flower_graph", "speedup_n50_1M_default_graph", "speedup_target",
        f"upload_expansion_n{big['n']}", "flower"])


if __name__ == "__main__":
    main()
