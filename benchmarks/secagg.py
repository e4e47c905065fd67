"""Secure aggregation's added cost per round: fedlm's SecAgg+ beside Flower 1.42's, and the floor.

Same n, vector length L, graph degree d, reconstruction threshold t and max weight 1 on
both sides, run interleaved (A, B, A, B, ...) in one process tree for ``--repeats``
repeats, with the 1-minute load average before and after every run. Two figures per
side, because they measure different things:

* **compute** (CPU seconds, no transport): fedlm's in-process
  :class:`~fedlm.privacy.secagg.session.SecAggSession` (all four phases, every message
  encoded to bytes and decoded again, every client and the server on this one process)
  minus a plaintext round of the same vectors; Flower's SecAgg+ run minus its plain run,
  CPU seconds of the whole process tree (Ray's workers included) per round.
* **with transport** (wall seconds per round): Flower's ``SecAggPlusWorkflow`` +
  ``secaggplus_mod`` in its simulation engine (Ray, ``--actors`` ClientApps at once)
  minus the plain ``DefaultWorkflow`` (``benchmarks._flower_secagg``; round 1 dropped);
  and fedlm's SecAgg+ over Flower messages (fedlm's app in the same engine, a model of
  about L trainable values, ``secure_aggregation.enabled`` against off) when
  ``--transport-n`` is set.

**The floor.** Masking needs at least n (d + 2) AES-CTR mask streams of L words with a
modular add each (every client: d pairwise masks and its self mask; the server: the n
self masks it removes). The benchmark times one such stream here (``apply_streams``, the
library's fastest path, median of 7) and prints ``floor = n (d + 2) t_stream`` beside
fedlm's added CPU. Goal: fedlm's added CPU <= 1.3x the floor at d = 2 and at the default
degree. ``--profile`` adds a cProfile of one fedlm round per degree (top functions by
own time): where the gap to the floor goes.

**The authenticated floor** (reported beside it, no goal): fedlm's protocol also checks
signatures and agrees keys, which the stream floor leaves out. With no dropouts every
client checks d signed key adverts and t consistency signatures (counting stops at t),
and agrees 2 keys per neighbour (its share channel and its mask seed). The benchmark times
one Ed25519 check and one X25519 agreement with HKDF (fedlm's own calls, median of 101)
and adds ``n (d + t) t_verify + 2 n d t_agree`` to the floor.

**The working floor** (beside it, no goal): the authenticated floor plus n quantisations of L
values (every client clips and stochastically rounds its vector before masking; fedlm's own
``quantize`` into a reused buffer, median of 7). What fedlm spends beyond it is protocol
bookkeeping: messages encoded and checked, the graph, the shares, the server's sum.

**Splits and seeds.** Nothing is tuned here (no validation split): the configurations are
fixed in advance and every figure is a timing of them (``--report-on`` accepts only test).
The seeds are the ``--repeats`` interleaved repeats (default 3; fedlm's repeat r runs
session seed r + 1). Raw rows: ``benchmarks/results/secagg.jsonl``.

    OMP_NUM_THREADS=1 python -m benchmarks.secagg [--quick] [--n 50] [--length 1000000]
        [--degrees 2,default] [--repeats 3] [--no-flower] [--transport-n 10] [--profile] [--report-on test]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks._procs import TreeMonitor, run_child
from benchmarks._record import (
    SplitRule,
    add_report_on,
    command_line,
    interleave,
    load_average,
    machine,
    write_results,
)
from benchmarks._stats import ratio_spread, spread
from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import crypto, identity
from fedlm.privacy.secagg.quantize import quantize
from fedlm.privacy.secagg.session import SecAggSession

NAME = "secagg"
FLOOR_GOAL = 1.3
SPLITS = SplitRule.untuned(
    test="fixed workload: n 50 clients, 1,000,000 float32 values, degrees 2 and fedlm's default, max weight 1",
    seeds=(0, 1, 2),  # the interleaved repeats
    fixed=("Flower with d + 1 shares and fedlm's threshold", "4 Flower rounds, round 1 dropped, 2 Ray actors",
           "floor: n (d + 2) AES-CTR streams, median of 7"),
    timing=True,
)


def vectors(n: int, length: int) -> list[np.ndarray]:
    """n client vectors; 4 distinct ones reused (masking cost does not depend on values)."""
    rng = np.random.default_rng(length)
    base = [rng.uniform(-0.5, 0.5, length).astype(np.float32) for _ in range(4)]
    return [base[i % 4] for i in range(n)]


def config_for(n: int, degree: int | None) -> SecAggConfig:
    """fedlm's SecAgg+ at ``degree`` neighbours (None: its default graph and threshold).

    At d = 2 the threshold is 2, Flower's setting for num_shares = 3."""
    if degree is None:
        return SecAggConfig(enabled=True)
    return SecAggConfig(enabled=True, neighbours=degree, threshold=2 if degree == 2 else degree // 2 + 1)


def median_cpu(call, reps: int) -> float:
    """Median CPU seconds of ``reps`` calls of ``call``."""
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        call()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def stream_seconds(length: int, reps: int = 7) -> float:
    """CPU seconds of one AES-CTR mask stream of ``length`` uint32 words added mod 2^32."""
    acc = np.zeros(length, dtype=np.uint32)
    seed = bytes(range(32))
    return median_cpu(lambda: crypto.apply_streams(acc, [(seed, False)]), reps)


def public_key_seconds(reps: int = 101) -> tuple[float, float]:
    """CPU seconds of one Ed25519 signature check and one X25519 agreement (HKDF included)."""
    signer, peer = Ed25519PrivateKey.generate(), crypto.private_key(crypto.generate_private_key())
    payload = bytes(64)
    public, signature = signer.public_key().public_bytes_raw(), signer.sign(payload)
    mine, theirs = crypto.private_key(crypto.generate_private_key()), crypto.public_key(peer)
    return (median_cpu(lambda: identity.verify(public, signature, payload), reps),
            median_cpu(lambda: crypto.agree(mine, theirs, label=b"mask", round_id=1), reps))


def quantize_seconds(length: int, config: SecAggConfig, reps: int = 7) -> float:
    """CPU seconds of one client's quantisation of ``length`` values (fedlm's own call)."""
    x, out = vectors(1, length)[0], np.empty(length, dtype=crypto.mask_dtype(config.modulus_bits))
    rng = np.random.default_rng(0)
    return median_cpu(lambda: quantize(x, bits=config.bits, clip=config.clip_range, rng=rng,
                                       dtype=out.dtype, out=out), reps)


def plaintext_round(vecs: list[np.ndarray]) -> None:
    """Clients serialise fp32; the server decodes and averages."""
    payloads = [v.astype("<f4").tobytes() for v in vecs]
    acc = np.zeros(vecs[0].size, np.float64)
    for p in payloads:
        acc += np.frombuffer(p, dtype="<f4")
    acc /= len(payloads)


def secure_round(vecs: list[np.ndarray], config: SecAggConfig, *, seed: int) -> dict[str, Any]:
    ids = [f"c{i}" for i in range(len(vecs))]
    session = SecAggSession(ids, vector_len=vecs[0].size, config=config, seed=seed)
    session.start()
    uploads = [session.mask(c, v) for c, v in zip(ids, vecs) if session.will_upload(c)]
    session.finish(u for u in uploads if u is not None)
    ph = session.stats["phases"]
    return {"degree": session.stats["degree"], "threshold": session.stats["threshold"],
            "critical_s": sum(p["client_seconds_max"] + p["server_seconds"] for p in ph.values()),
            "upload_expansion": sum(p["bytes_up"] for p in ph.values()) / len(vecs) / (4.0 * vecs[0].size)}


def fedlm_inprocess(n: int, length: int, degree: int | None, *, seed: int) -> dict[str, Any]:
    """One plaintext and one secure round, back to back: added CPU and wall seconds."""
    vecs = vectors(n, length)
    c0, w0 = time.process_time(), time.perf_counter()
    plaintext_round(vecs)
    c1, w1 = time.process_time(), time.perf_counter()
    config = config_for(n, degree)
    info = secure_round(vecs, config, seed=seed)
    c2, w2 = time.process_time(), time.perf_counter()
    t_stream = stream_seconds(length)
    t_verify, t_agree = public_key_seconds()
    t_quantize = quantize_seconds(length, config)
    d, t = info["degree"], info["threshold"]
    floor = n * (d + 2) * t_stream
    auth_floor = floor + n * (d + t) * t_verify + 2 * n * d * t_agree
    work_floor = auth_floor + n * t_quantize
    added_cpu = (c2 - c1) - (c1 - c0)
    return {**info, "plain_cpu_s": c1 - c0, "secure_cpu_s": c2 - c1, "added_cpu_s": added_cpu,
            "added_wall_s": (w2 - w1) - (w1 - w0), "stream_s": t_stream, "floor_s": floor,
            "floor_ratio": added_cpu / floor, "verify_s": t_verify, "agree_s": t_agree,
            "auth_floor_s": auth_floor, "auth_floor_ratio": added_cpu / auth_floor,
            "quantize_s": t_quantize, "work_floor_s": work_floor, "work_floor_ratio": added_cpu / work_floor}


def flower_run(n: int, length: int, *, shares: int, threshold: int, secagg: bool, rounds: int,
               actors: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks._flower_secagg", "--n", str(n), "--length", str(length),
            "--rounds", str(rounds), "--num-shares", str(shares), "--threshold", str(threshold),
            "--max-weight", "1", "--actors", str(actors)] + (["--secagg"] if secagg else [])
    res = run_child(argv, env={"OMP_NUM_THREADS": "1"})
    times = res["round_seconds"][1:]  # round 1 starts the Ray actors
    return {"round_s": statistics.median(times), "cpu_per_round_s": res["cpu_s"] / rounds,
            "cpu_s": res["cpu_s"], "wall_s": res["wall_s"], "peak_mib": res["peak_mib"]}


def transport_model(length: int) -> str:
    """``model.architecture`` of a random tiny Llama with about ``length`` trainable values."""
    layers = max(1, round((length - 33_408) / 172_288))  # hidden 128: 172,288 per layer, 33,408 outside
    return (f"{{hidden_size: 128, num_hidden_layers: {layers}, intermediate_size: 384, num_attention_heads: 4,"
            " num_key_value_heads: 2}")


def fedlm_over_flower(n: int, length: int, degree: int | None, *, secagg: bool, rounds: int, work: Path) -> dict:
    """fedlm's app in Flower's simulation engine; per-round wall and tree CPU seconds."""
    from fedlm.config import load_config
    from fedlm.deploy.simulation_engine import FlowerSimulation

    rows = work / f"rows-{n}.jsonl"
    if not rows.is_file():
        with rows.open("w") as fh:
            for c in range(n):
                for r in range(8):
                    fh.write(json.dumps({"client": f"c{c:03d}", "text": f"client {c} line {r} " * 12}) + "\n")
    sec = ["secure_aggregation.enabled=true"]
    if degree is not None:
        cfg = config_for(n, degree)
        sec += [f"secure_aggregation.neighbours={cfg.neighbours}", f"secure_aggregation.threshold={cfg.threshold}"]
    config = load_config(None, [
        "name=secagg-transport", "model.name=tiny-llama", "model.init=random", "lora.enabled=false",
        f"model.architecture={transport_model(length)}", "data.source=jsonl", f"data.path={rows}",
        "data.client_field=client", "data.partition=natural", "data.min_client_chars=0", "data.max_clients=null",
        "data.seq_len=32", f"federation.rounds={rounds}", f"federation.clients_per_round={n}",
        "federation.local_steps=1", "federation.batch_size=1", "federation.weighting=uniform",
        f"eval.every={rounds}", "eval.max_clients=1",
        "eval.max_batches_per_client=1", "output.report=false", f"output.checkpoint_every={rounds}",
        "deploy.floor_s=900", "deploy.train_s=900", *(sec if secagg else []),
    ])
    out = work / f"run-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    engine = FlowerSimulation(config, out / "work", out / "run")
    with TreeMonitor(lambda: [p.popen.pid for p in engine.procs.values()]) as mon, engine:
        summary = engine.run()
    rows_ = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rs = [r["seconds"]["round"] for r in rows_ if r.get("type") == "round"]
    return {"round_s": statistics.median(rs[1:] or rs), "cpu_s": mon.cpu_s, "cpu_per_round_s": mon.cpu_s / rounds,
            "wall_s": time.perf_counter() - t0, "trainable": summary.get("trainable_parameters")}


def profile_round(n: int, length: int, degree: int | None, top: int = 14) -> list[dict[str, Any]]:
    """cProfile of one fedlm round: the functions with the most own time."""
    vecs = vectors(n, length)
    prof = cProfile.Profile()
    prof.enable()
    secure_round(vecs, config_for(n, degree), seed=0)
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(((v[2], v[3], k) for k, v in st.stats.items()), reverse=True)[:top]
    return [{"function": f"{Path(k[0]).name}:{k[1]}:{k[2]}", "own_s": own, "cumulative_s": cum,
             "share": own / total} for own, cum, k in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 10, L = 100,000, 1 repeat, no transport run")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--length", type=int, default=1_000_000)
    ap.add_argument("--degrees", default="2,default", help="neighbours per client; 'default' is fedlm's graph")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="Flower rounds per run (the first is dropped)")
    ap.add_argument("--actors", type=int, default=2, help="Flower's Ray CPUs (ClientApps at once)")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--transport-n", type=int, default=0, help="also run fedlm over Flower messages at this n")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    if args.quick:
        args.n, args.length, args.repeats, args.rounds, args.transport_n = 10, 100_000, 1, 3, 0
    rule = replace(SPLITS, seeds=tuple(range(args.repeats)))  # the repeats this run ran
    rule_fields = {"splits": rule.as_dict(), "reported_on": split}
    have_flwr = importlib.util.find_spec("flwr") is not None and not args.no_flower
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="fedlm-secagg-"))
    n, L = args.n, args.length
    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for dtext in args.degrees.split(","):
        degree = None if dtext == "default" else int(dtext)
        probe = SecAggSession([f"c{i}" for i in range(n)], vector_len=8, config=config_for(n, degree), seed=0)
        d, t = probe.stats["degree"], probe.stats["threshold"]
        def fedlm_run(degree=degree, seeds=iter(range(1, 10_000))) -> dict[str, Any]:  # noqa: B008
            return fedlm_inprocess(n, L, degree, seed=next(seeds))

        runs: dict[str, Any] = {"fedlm": fedlm_run}
        if have_flwr:
            runs["flower_plain"] = lambda d=d, t=t: flower_run(n, L, shares=d + 1, threshold=t, secagg=False,
                                                                rounds=args.rounds, actors=args.actors)
            runs["flower_secagg"] = lambda d=d, t=t: flower_run(n, L, shares=d + 1, threshold=t, secagg=True,
                                                                 rounds=args.rounds, actors=args.actors)
        if args.transport_n:
            for name, sec in (("fedlm_flower_plain", False), ("fedlm_flower_secagg", True)):
                runs[name] = lambda degree=degree, sec=sec: fedlm_over_flower(
                    args.transport_n, L, degree, secagg=sec, rounds=args.rounds, work=work)
        res = interleave(runs, args.repeats, log=log)
        fed = res["fedlm"]
        entry: dict[str, Any] = {
            "n": n, "length": L, "degree": d, "threshold": t, "graph": dtext,
            "fedlm_added_cpu_s": spread([r["added_cpu_s"] for r in fed]).as_dict(),
            "fedlm_added_wall_s": spread([r["added_wall_s"] for r in fed]).as_dict(),
            "fedlm_critical_s": spread([r["critical_s"] for r in fed]).as_dict(),
            "floor_s": spread([r["floor_s"] for r in fed]).as_dict(),
            "stream_ms_per_1M": 1e3 * statistics.median(r["stream_s"] for r in fed) * 1e6 / L,
            "floor_ratio": spread([r["floor_ratio"] for r in fed]).as_dict(),
            "auth_floor_s": spread([r["auth_floor_s"] for r in fed]).as_dict(),
            "auth_floor_ratio": spread([r["auth_floor_ratio"] for r in fed]).as_dict(),
            "quantize_ms_per_1M": 1e3 * statistics.median(r["quantize_s"] for r in fed) * 1e6 / L,
            "work_floor_s": spread([r["work_floor_s"] for r in fed]).as_dict(),
            "work_floor_ratio": spread([r["work_floor_ratio"] for r in fed]).as_dict(),
            "upload_expansion": fed[0]["upload_expansion"],
        }
        fr = entry["floor_ratio"]
        entry["floor_goal"] = (f"<= {FLOOR_GOAL}: " + ("met" if fr["max"] <= FLOOR_GOAL else
                               "missed" if fr["min"] > FLOOR_GOAL else "not separable")
                               + (f" ({fr['n']} repeats)" if fr["n"] >= 3 else f" (not established: {fr['n']} repeat)"))
        if have_flwr:
            fp, fs = res["flower_plain"], res["flower_secagg"]
            fl_wall = [s["round_s"] - p["round_s"] for p, s in zip(fp, fs)]
            fl_cpu = [s["cpu_per_round_s"] - p["cpu_per_round_s"] for p, s in zip(fp, fs)]
            entry["flower_added_wall_s"] = spread(fl_wall).as_dict()
            entry["flower_added_cpu_s"] = spread(fl_cpu).as_dict()
            entry["cpu_ratio_flower_over_fedlm"] = ratio_spread(fl_cpu, [r["added_cpu_s"] for r in fed]).as_dict()
        if args.transport_n:
            tp, ts = res["fedlm_flower_plain"], res["fedlm_flower_secagg"]
            entry["transport_n"] = args.transport_n
            entry["fedlm_flower_added_wall_s"] = spread([s["round_s"] - p["round_s"] for p, s in zip(tp, ts)]).as_dict()
            entry["fedlm_flower_added_cpu_s"] = spread([s["cpu_per_round_s"] - p["cpu_per_round_s"]
                                                        for p, s in zip(tp, ts)]).as_dict()
            entry["transport_length"] = tp[0].get("trainable")
        if args.profile:
            entry["profile"] = profile_round(n, L, degree)
        summary[dtext] = entry
        for name, rs in res.items():
            for r in rs:
                rows.append({"graph": dtext, "n": n, "length": L, "degree": d, "threshold": t, "system": name, **r,
                             **rule_fields})
        log(json.dumps({k: v for k, v in entry.items() if k != "profile"}))
    if not args.quick:  # the upload-expansion target is at n = 100
        big = secure_round(vectors(100, 100_000), config_for(100, None), seed=0)
        summary["upload_expansion_n100"] = {"value": big["upload_expansion"], "goal": "<= 1.5"}
    cmd = command_line("secagg")
    record = not (args.no_record or args.quick)
    write_results(NAME, rows, command=cmd, record=record)
    write_results(NAME + "_summary", [{"summary": summary, **rule_fields}], command=cmd, record=record)
    print(json.dumps({"benchmark": NAME, "machine": machine(), "load_end": load_average(), "splits": rule.describe(),
                      "reported_on": split, "summary": summary}))


if __name__ == "__main__":
    main()
