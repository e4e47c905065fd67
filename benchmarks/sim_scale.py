"""Simulator scale: 1,000 tiny-llama clients, peak RSS and time per round.

The simulator keeps ONE base model; each client costs only its data and, when a stage
keeps per-client state, that state. Peak RSS is measured after building 10 and 1,000
clients in separate processes, so the difference is the cost of 990 extra clients.

**Splits and seeds.** Nothing is tuned (no validation split): a measurement of a fixed
workload (3 generated rows a client, every client every round; ``--report-on`` accepts only
test). One run per size (seed 0, no repeats); its round time is the fastest of 2 rounds
(1 with ``--quick``).

    python -m benchmarks.sim_scale [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._record import SplitRule, add_report_on, finish, peak_rss_mib

SPLITS = SplitRule.untuned(
    test="fixed workload: 10 and 1,000 tiny-llama clients, 3 generated rows each, 1 local step, all per round",
    seeds=(0,),  # one run per size
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

    small = child(10, 10)
    big = child(1000, 1000)
    finish("sim_scale", {
        "clients": big["clients"],
        "clients_per_round": big["per_round"],
        "round_seconds": big["round_seconds"],
        "seconds_per_client_update": big["round_seconds"] / big["per_round"],
        "peak_rss_mib": big["peak_rss_mib"],
        "peak_rss_mib_10_clients": small["peak_rss_mib"],
        "mib_per_extra_client": (big["peak_rss_mib"] - small["peak_rss_mib"]) / (big["clients"] - small["clients"]),
        "splits": SPLITS.as_dict(),
        "reported_on": split,
    }, columns=["clients", "clients_per_round", "round_seconds", "seconds_per_client_update", "peak_rss_mib",
                "peak_rss_mib_10_clients", "mib_per_extra_client"])


if __name__ == "__main__":
    main()
