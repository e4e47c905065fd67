"""Simulator scale: 1,000 tiny-llama clients, peak RSS and time per round.

The simulator keeps ONE base model; each client costs only its data and, when a stage
keeps per-client state, that state. Peak RSS is measured after building 10 and 1,000
clients in separate processes, so the difference is the cost of 990 extra clients.

**Splits and seeds.** Nothing is tuned (no validation split): a measurement of a fixed
workload (3 generated rows a client, every client every round; ``--report-on`` accepts only
test). ``--repeats N`` (default 1) runs the two sizes N times, interleaved (10, 1,000, 10,
1,000, ...), each in a fresh process; each figure is the median over repeats, and with
N >= 2 the 95% Student-t interval of each is recorded too. A run's round time is the fastest
of 2 rounds (1 with ``--quick``).

    python -m benchmarks.sim_scale [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._record import SplitRule, add_report_on, finish, load_average, peak_rss_mib
from benchmarks._stats import t_interval

SPLITS = SplitRule.untuned(
    test="fixed workload: 10 and 1,000 tiny-llama clients, 3 generated rows each, 1 local step, all per round",
    seeds=(0,),  # the repeats (--repeats), one run of each size each
    fixed=("seq_len 64, batch 2", "separate processes for 10 and 1,000 clients"),
    timing=True,
)


def one(num_clients: int, per_round: int, rounds: int) -> dict:
    """Run in this process: build num_clients clients and time rounds."""
    from fedlm.capabilities import build_engine
    from fedlm.commands.experiment import prepare
    from fedlm.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clients.jsonl"
        with path.open("w") as fh:
            for c in range(num_clients):
                for r in range(3):
                    fh.write(json.dumps({"client": f"c{c:04d}", "text": f"client {c} says line {r}. " * 6}) + "\n")
        config = load_config(None, [
            "model.name=tiny-llama", "data.source=jsonl", f"data.path={path}", "data.client_field=client",
            "data.min_client_chars=0", "data.max_clients=null", "data.seq_len=64",
            f"federation.clients_per_round={per_round}", "federation.local_steps=1", "federation.batch_size=2",
            f"federation.rounds={rounds}",
        ])
        model, data = prepare(config)
        sim = build_engine(config, model, data)
        state = sim.init_state()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            state, _ = sim.run_round(state)
            times.append(time.perf_counter() - t0)
    return {"clients": len(data.clients), "per_round": per_round, "round_seconds": min(times), "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each size, interleaved")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    if args.child:
        print(json.dumps(one(*args.child)))
        return
    rounds = 1 if args.quick else 2

    def child(n: int, k: int) -> dict:
        out = subprocess.run([sys.executable, "-m", "benchmarks.sim_scale", "--child", str(n), str(k), str(rounds)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: run each size at least once")
    runs, loads = [], [load_average()]
    for _ in range(args.repeats):
        small, big = child(10, 10), child(1000, 1000)
        runs.append({
            "round_seconds": big["round_seconds"],
            "peak_rss_mib": big["peak_rss_mib"],
            "peak_rss_mib_10_clients": small["peak_rss_mib"],
            "mib_per_extra_client": (big["peak_rss_mib"] - small["peak_rss_mib"]) / (big["clients"] - small["clients"]),
        })
        loads.append(load_average())
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    finish("sim_scale", {
        "clients": big["clients"],
        "clients_per_round": big["per_round"],
        **median,
        "seconds_per_client_update": median["round_seconds"] / big["per_round"],
        "repeats": runs,
        "ci95": {k: t_interval([r[k] for r in runs]).as_dict() for k in runs[0]} if len(runs) > 1 else None,
        "load_1min_between_repeats": loads,
        "splits": replace(SPLITS, seeds=tuple(range(args.repeats))).as_dict(),
        "reported_on": split,
    }, columns=["clients", "clients_per_round", "round_seconds", "seconds_per_client_update", "peak_rss_mib",
                "peak_rss_mib_10_clients", "mib_per_extra_client"])


if __name__ == "__main__":
    main()
