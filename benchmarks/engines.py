"""One workload on three engines: fedlm's simulator, Flower's simulation engine, and a
local deployment on Flower's Deployment Engine (SuperLink + SuperNodes, TLS, node auth).

The workload is communication-bound on purpose: tiny-llama with LoRA, one local step of
2 sequences per client, so a round is mostly what an engine adds around training
(broadcast, process and message handling, aggregation). Every engine runs the same
config (clients, steps, model, seeds) to the same adapter; fedlm's simulator runs as
``fedlm run`` in a child process so all three are measured alike:

* ``round_s``: mean wall time of a round, from the run's ``metrics.jsonl``
  (``seconds.round``: plan -> every client's update -> server step; start-up excluded);
* ``total_s``: wall time from launch to ``summary.json`` (start-up included);
* ``peak_mib``: peak resident memory summed over every process of the engine (sampled
  every 0.2 s with psutil).

Goal: fedlm's simulator >= 3x the throughput (rounds per second) of Flower's simulation
engine on this workload.

    OMP_NUM_THREADS=1 python -m benchmarks.engines [--clients 4] [--rounds 3] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks._record import append_table, machine
from fedlm.config import load_config
from fedlm.config.loader import dump_config

WORDS = ["federated", "learning", "keeps", "data", "where", "it", "lives", "while", "a", "shared", "model", "improves", "round", "after", "round"]


def write_rows(path: Path, *, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(rows):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(40))}) + "\n")
    return path


def workload(data: Path, *, clients: int, rounds: int):
    return load_config(None, [
        "name=engines", "model.name=tiny-llama", "lora.r=4", "data.source=jsonl", f"data.path={data}",
        "data.partition=iid", f"data.num_clients={clients}", "data.min_client_chars=0", "data.max_clients=null",
        "data.seq_len=32", f"federation.rounds={rounds}", f"federation.clients_per_round={clients}",
        "federation.local_steps=1", "federation.batch_size=2", "federation.lr=0.01", f"eval.every={rounds}",
        f"eval.max_clients={clients}", "eval.batch_size=4", "output.report=false",
        "deploy.floor_s=300", "deploy.train_s=300",
    ])


class PeakMemory:
    """Peak of the summed RSS of some processes and all their descendants (MiB)."""

    def __init__(self, roots) -> None:
        self.roots, self.peak, self._stop = roots, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in list(self.roots()):
                try:
                    p = psutil.Process(pid)
                    total += sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total / 2**20)
            time.sleep(0.2)


def round_seconds(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"]["round"] for r in rows if r.get("type") == "round"]


def run_simulator(config, work: Path) -> dict:
    cfg = work / "config.yaml"
    cfg.write_text(dump_config(config))
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fedlm"), "run", "-c", str(cfg), "--out", str(work / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with PeakMemory(lambda: [proc.pid]) as mem:
        if proc.wait() != 0:
            raise SystemExit("fedlm run failed")
    return {"total_s": time.perf_counter() - t0, "peak_mib": mem.peak, "rounds": round_seconds(work / "run")}


def run_flower(kind: str, config, work: Path) -> dict:
    from fedlm.deploy.launcher import LocalFederation
    from fedlm.deploy.simulation_engine import FlowerSimulation

    t0 = time.perf_counter()
    engine = (FlowerSimulation(config, work / "work", work / "run") if kind == "flower_simulation"
              else LocalFederation(config, work / "work", work / "run", nodes=config.data.num_clients))
    with PeakMemory(lambda: [p.popen.pid for p in engine.procs.values()]) as mem, engine:
        engine.run()
    return {"total_s": time.perf_counter() - t0, "peak_mib": mem.peak, "rounds": round_seconds(work / "run")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="fedlm_simulator,flower_simulation,flower_deployment")
    ap.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedlm-engines-"))
    data = write_rows(root / "rows.jsonl", rows=24 * args.clients)
    config = workload(data, clients=args.clients, rounds=args.rounds)
    results = {}
    for kind in args.engines.split(","):
        work = root / kind
        work.mkdir()
        res = run_simulator(config, work) if kind == "fedlm_simulator" else run_flower(kind, config, work)
        res["round_s"] = statistics.mean(res["rounds"])
        results[kind] = res
        print(json.dumps({"engine": kind, **res}), flush=True)
    base = results.get("fedlm_simulator", {}).get("round_s")
    rows = [{"engine": k, "clients": args.clients, "rounds": args.rounds, "round_s": r["round_s"],
             "total_s": r["total_s"], "peak_mib": r["peak_mib"],
             "simulator_speedup": (r["round_s"] / base) if base else None} for k, r in results.items()]
    cmd = f"OMP_NUM_THREADS=1 python -m benchmarks.engines --clients {args.clients} --rounds {args.rounds}"
    append_table("Engines", rows, columns=["engine", "clients", "rounds", "round_s", "total_s", "peak_mib",
                                           "simulator_speedup"], record=not args.no_record, note=cmd)
    print(json.dumps({"benchmark": "engines", "machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
