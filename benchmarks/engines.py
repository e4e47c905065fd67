"""One workload, five ways: the floor, fedlm's simulator, Flower-native, and fedlm over Flower.

The workload is communication-bound on purpose: a tiny Llama (fedlm's ``tiny-llama``
preset, saved once as an HF directory that every engine loads), LoRA r = 4 on q/v, each
client 1 AdamW step of 2 x 64 tokens, every client every round, FedAvg by examples. So a
round is mostly what an engine adds around training.

- ``floor``: a plain sequential loop in HF + PEFT (:mod:`benchmarks._hf_workload`): one
  model, the clients trained one after another, states averaged. Nothing an engine could
  remove is left in it.
- ``fedlm_simulator``: ``fedlm run`` (fedlm's in-process simulator).
- ``flower_native``: a Flower app written the way FlowerTune writes one, from Flower's
  Message API and HF only (:mod:`benchmarks._flower_llm_app`), in Flower's simulation
  engine (``run_simulation``, Ray, one CPU per ClientApp).
- ``fedlm_flower_sim``: fedlm's own Flower app (``fedlm deploy app``) in Flower's
  simulation engine (``flower-superlink --simulation`` + ``flwr run``,
  :class:`fedlm.deploy.simulation_engine.FlowerSimulation`).
- ``fedlm_deployed``: ``fedlm deploy local``: SuperLink + one SuperNode per client with
  TLS and node authentication, fedlm's worker serving the nodes
  (:class:`fedlm.deploy.launcher.LocalFederation`); at <= ``--deploy-max`` clients.

Every engine runs in its own process tree, interleaved (floor, fedlm, Flower, ..., then
again) for ``--repeats`` repeats, with the 1-minute load average before and after each.
Per run: ``round_s`` the median warm round (rounds 2..R: round 1 starts Ray, imports and
caches), ``total_s`` launch to exit, ``peak_mib`` the peak of the summed RSS of the whole
process tree (sampled every 0.2 s with psutil), ``cpu_s`` its CPU seconds.

**Splits and seeds.** Nothing is tuned (no validation split): the workload is fixed in
advance and every figure is a timing of it (``--report-on`` accepts only test). The seeds
are the ``--repeats`` interleaved repeats (default 3; the workload itself is seed 0).

Goals (every repeat must hold them; medians and the spread are reported):

1. fedlm's simulator round within 1.2x of the floor's;
2. fedlm's total run time <= 0.5x Flower-native's;
3. fedlm over Flower: its round against Flower-native's round in the same engine (the
   overhead of fedlm's messages, reported as a ratio; read against 1.2x, the floor's
   tolerance).

    OMP_NUM_THREADS=1 python -m benchmarks.engines [--clients 4,16,64] [--rounds 3]
        [--repeats 3] [--engines floor,fedlm_simulator,flower_native,fedlm_flower_sim,fedlm_deployed]
        [--wait-quiet 0] [--no-record] [--report-on test]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._procs import TreeMonitor, run_child
from benchmarks._record import (
    ROOT,
    SplitRule,
    add_report_on,
    command_line,
    git_rev,
    interleave,
    load_average,
    machine,
    wait_for_quiet,
    write_results,
)
from benchmarks._stats import ratio_spread, spread

NAME = "engines"
ENGINES = ("floor", "fedlm_simulator", "flower_native", "fedlm_flower_sim", "fedlm_deployed")
WORDS = ["federated", "learning", "keeps", "data", "where", "it", "lives", "while", "a", "shared", "model",
         "improves", "round", "after", "round"]
ROWS_PER_CLIENT = 24
SPLITS = SplitRule.untuned(
    test="fixed workload: tiny-llama, LoRA r 4 on q/v, 1 AdamW step of 2 x 64 tokens per client per round",
    seeds=(0, 1, 2),  # the interleaved repeats
    fixed=("clients 4, 16, 64; every client every round", "3 rounds, round 1 dropped from round_s",
           "24 rows per client", "fedlm_deployed at <= 4 clients"),
    timing=True,
)


def write_workload(root: Path, clients: int) -> dict[str, Path]:
    """The model directory, one JSONL per client, and the same rows in one file for fedlm."""
    from fedlm.models.loading import load_base_model

    model_dir = root / "tiny-llama-hf"
    if not (model_dir / "config.json").is_file():
        model, tok = load_base_model("tiny-llama", seed=0)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    data = root / f"data-{clients}"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    with (data / "all.jsonl").open("w") as every:
        for c in range(clients):
            with (data / f"client_{c}.jsonl").open("w") as fh:
                for _ in range(ROWS_PER_CLIENT):
                    text = " ".join(rng.choice(WORDS) for _ in range(40))
                    fh.write(json.dumps({"text": text}) + "\n")
                    every.write(json.dumps({"client": f"c{c:03d}", "text": text}) + "\n")
    return {"model": model_dir, "data": data, "all": data / "all.jsonl"}


def fedlm_config(paths: dict[str, Path], *, clients: int, rounds: int):
    from fedlm.config import load_config

    return load_config(None, [
        "name=engines", f"model.name={paths['model']}", "lora.r=4", "lora.alpha=8",
        "lora.target_modules=[q_proj,v_proj]", "data.source=jsonl", f"data.path={paths['all']}",
        "data.client_field=client", "data.partition=natural", "data.min_client_chars=0", "data.max_clients=null",
        "data.seq_len=64", f"federation.rounds={rounds}", f"federation.clients_per_round={clients}",
        "federation.local_steps=1", "federation.batch_size=2", "federation.lr=0.01", f"eval.every={rounds}",
        "eval.max_clients=1", "eval.max_batches_per_client=1", "eval.batch_size=4", "output.report=false",
        f"output.checkpoint_every={rounds}", "deploy.floor_s=600", "deploy.train_s=600",
    ])


def _warm(rounds: list[float]) -> float:
    return statistics.median(rounds[1:] if len(rounds) > 1 else rounds)


def metrics_rounds(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"]["round"] for r in rows if r.get("type") == "round"]


def runner(kind: str, paths: dict[str, Path], *, clients: int, rounds: int, work: Path):
    """A callable that runs ``kind`` once and returns its figures."""
    py = sys.executable
    counter = [0]

    def go() -> dict[str, Any]:
        counter[0] += 1
        w = work / f"{kind}-{counter[0]}"
        w.mkdir(parents=True)
        common = ["--model", str(paths["model"]), "--data", str(paths["data"]), "--clients", str(clients),
                  "--rounds", str(rounds)]
        if kind == "floor":
            res = run_child([py, "-m", "benchmarks._hf_workload", *common])
            rs = res["round_seconds"]
        elif kind == "flower_native":
            res = run_child([py, "-m", "benchmarks._flower_llm_app", *common],
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            rs = res["round_seconds"]
        elif kind == "fedlm_simulator":
            from fedlm.config.loader import dump_config

            cfg = w / "config.yaml"
            cfg.write_text(dump_config(fedlm_config(paths, clients=clients, rounds=rounds)))
            res = run_child([str(Path(py).parent / "fedlm"), "run", "-c", str(cfg), "--out", str(w / "run")])
            rs = metrics_rounds(w / "run")
        else:
            from fedlm.deploy.launcher import LocalFederation
            from fedlm.deploy.simulation_engine import FlowerSimulation

            config = fedlm_config(paths, clients=clients, rounds=rounds)
            t0 = time.perf_counter()
            engine = (FlowerSimulation(config, w / "work", w / "run") if kind == "fedlm_flower_sim"
                      else LocalFederation(config, w / "work", w / "run", nodes=clients))
            with TreeMonitor(lambda: [p.popen.pid for p in engine.procs.values()]) as mon, engine:
                engine.run()
            res = {"wall_s": time.perf_counter() - t0, "peak_mib": mon.peak, "cpu_s": mon.cpu_s}
            rs = metrics_rounds(w / "run")
        return {"round_s": _warm(rs), "rounds": rs, "total_s": res["wall_s"], "peak_mib": res["peak_mib"],
                "cpu_s": res["cpu_s"]}

    return go


def goals(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The three goals from paired repeats (each pair ran back to back)."""
    out: dict[str, Any] = {}

    def ratios(a: str, b: str, key: str):
        if a in results and b in results:
            return ratio_spread([r[key] for r in results[a]], [r[key] for r in results[b]])
        return None

    def judge(sp, limit: float) -> str:
        if sp is None:
            return "not measured"
        if sp.n < 3:
            return f"not established ({sp.n} repeats < 3)"
        return "met" if sp.hi <= limit else ("missed" if sp.lo > limit else "not separable (repeats straddle)")

    r = ratios("fedlm_simulator", "floor", "round_s")
    out["simulator_round_vs_floor"] = {"ratio": r and r.as_dict(), "goal": "<= 1.2", "status": judge(r, 1.2)}
    t = ratios("fedlm_simulator", "flower_native", "total_s")
    out["simulator_total_vs_flower"] = {"ratio": t and t.as_dict(), "goal": "<= 0.5", "status": judge(t, 0.5)}
    for eng in ("fedlm_flower_sim", "fedlm_deployed"):
        o = ratios(eng, "flower_native", "round_s")
        out[f"{eng}_round_vs_flower_native"] = {"ratio": o and o.as_dict(), "goal": "<= 1.2 (read as the floor's)",
                                                "status": judge(o, 1.2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="4,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--deploy-max", type=int, default=4, help="run fedlm_deployed only up to this many clients")
    ap.add_argument("--wait-quiet", type=float, default=0.0,
                    help="wait up to this many seconds for the load average to fall below 2.5 first")
    ap.add_argument("--quick", action="store_true", help="4 clients, 2 rounds, 1 repeat, no deployment")
    ap.add_argument("--no-record", action="store_true")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    if args.quick:
        args.clients, args.rounds, args.repeats = "4", 2, 1
        args.engines = "floor,fedlm_simulator,flower_native"
    rule = replace(SPLITS, seeds=tuple(range(args.repeats)))  # the repeats this run ran
    rule_fields = {"splits": rule.as_dict(), "reported_on": split}
    engines = [e for e in args.engines.split(",") if e]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        ap.error(f"--engines {sorted(unknown)} unknown; choose among {','.join(ENGINES)}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    root = Path(tempfile.mkdtemp(prefix="fedlm-engines-"))
    from fedlm.deploy.processes import flwr_bin

    deploy_note = f"fedlm.deploy as on disk (git {git_rev()})"
    all_rows, summary = [], {}
    for n in [int(x) for x in args.clients.split(",")]:
        load = wait_for_quiet(timeout_s=args.wait_quiet, log=log)
        paths = write_workload(root, n)
        here = [e for e in engines if e != "fedlm_deployed" or n <= args.deploy_max]
        runs = {e: runner(e, paths, clients=n, rounds=args.rounds, work=root / f"runs-{n}") for e in here}
        results = interleave(runs, args.repeats, log=log)
        summary[n] = {"goals": goals(results), "start_load": load,
                      "engines": {e: {k: spread([r[k] for r in rs]).as_dict() for k in ("round_s", "total_s",
                                                                                         "peak_mib", "cpu_s")}
                                  for e, rs in results.items()}}
        for e, rs in results.items():
            for r in rs:
                all_rows.append({"clients": n, "engine": e, "rounds_run": args.rounds, **r, **rule_fields})
        log(json.dumps({"clients": n, "goals": summary[n]["goals"]}))
    cmd = command_line("engines")
    write_results(NAME, all_rows, command=cmd, record=not (args.no_record or args.quick))
    write_results(NAME + "_summary", [{"summary": summary, "deploy": deploy_note, "flwr": flwr_bin("flwr"),
                                       **rule_fields}], command=cmd, record=not (args.no_record or args.quick))
    print(json.dumps({"benchmark": NAME, "machine": machine(), "load_end": load_average(), "deploy": deploy_note,
                      "splits": rule.describe(), "reported_on": split, "summary": summary}))


if __name__ == "__main__":
    main()
