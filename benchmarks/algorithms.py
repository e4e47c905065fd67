"""Federated algorithms under label skew, and LoRA-aware aggregation, side by side.

Part 1, optimisers: FedAvg, FedAvgM, FedProx, SCAFFOLD, FedAdam and FedYogi, each at
Dirichlet alpha in {0.1, 1, 100} (alpha = 100 is nearly IID, 0.1 gives most clients one or
two topics). Every run trains the same random ``tiny-llama`` (all weights, local plain SGD,
as in the FedProx and SCAFFOLD papers) from the same init, on the same clients, seeded
cohorts and steps; only the algorithm differs. Reported: final held-out loss (all held-out
sequences of every client, so every topic counts) and the rounds until the held-out loss
first falls to the target, ``--target-loss`` (default: 1.05 x the best final loss at
alpha = 100, so the IID runs define what is reachable).

Part 2, LoRA aggregation: naive (A and B averaged separately), exact (FedEx-LoRA: residual
folded into the frozen base, its bytes counted) and ffa (A frozen), with LoRA r = 8 on a
``tiny-llama`` base and local AdamW, at alpha in {0.1, 1}. Reported: final held-out loss,
the aggregation error ||mean(BA) - applied dW||_F / ||mean(BA)||_F (mean over layers and
rounds, and the worst layer-round), and bytes down.

Data: synthetic topic text written on the fly (8 topics, each its own 40-word Zipfian
vocabulary plus shared function words; ``topic`` is the Dirichlet label), 10 clients, 5
per round. The 24 runs took 18 minutes on 2 CPU cores shared with other jobs (one torch
thread); `--rounds` and `--local-steps` shrink it.

    python -m benchmarks.algorithms [--quick] [--rounds 15] [--target-loss X]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._record import finish
from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare
from fedlm.config import load_config

ALPHAS = (0.1, 1.0, 100.0)
# name -> config overrides (on top of local SGD with lr --lr)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"server_opt.name": "fedavgm", "server_opt.lr": 1.0, "server_opt.momentum": 0.9},
    "fedprox": {"local.algorithm": "fedprox", "local.prox_mu": 0.01},
    "scaffold": {"local.algorithm": "scaffold"},
    # server lr / tau: the best final loss at alpha = 1 of {3e-3/1e-4, 1e-2/1e-3, 3e-2/1e-2, 1e-1/1e-1}
    "fedadam": {"server_opt.name": "fedadam", "server_opt.lr": 1e-2, "server_opt.tau": 1e-3},
    "fedyogi": {"server_opt.name": "fedyogi", "server_opt.lr": 1e-2, "server_opt.tau": 1e-3},
}
LORA_METHODS = ("naive", "exact", "ffa")
LORA_ALPHAS = (0.1, 1.0)
FUNCTION_WORDS = ["the", "a", "of", "and", "to", "in", "is", "that", "it", "for"]


def write_topics(path: Path, *, topics: int = 8, rows: int = 60, seed: int = 0) -> Path:
    """JSONL rows ``{"topic", "text"}``: each topic draws from its own Zipfian vocabulary."""
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w") as fh:
        for t in range(topics):
            vocab = ["".join(rng.choice(list(letters), size=rng.integers(3, 8))) for _ in range(40)]
            p = 1.0 / np.arange(1, len(vocab) + 1)
            p /= p.sum()
            for _ in range(rows):
                words = [FUNCTION_WORDS[rng.integers(len(FUNCTION_WORDS))] if rng.random() < 0.3 else vocab[rng.choice(len(vocab), p=p)]
                         for _ in range(30)]
                fh.write(json.dumps({"topic": f"topic{t}", "text": " ".join(words)}) + "\n")
    return path


def base_overrides(args: argparse.Namespace, data: Path, alpha: float) -> dict[str, Any]:
    return {
        "model.name": "tiny-llama",
        "data.source": "jsonl",
        "data.path": str(data),
        "data.partition": "dirichlet",
        "data.label_field": "topic",
        "data.dirichlet_alpha": alpha,
        "data.num_clients": 10,
        "data.max_clients": "null",
        "data.min_client_chars": 0,
        "data.seq_len": 32,
        "data.heldout_fraction": 0.2,
        "federation.rounds": args.rounds,
        "federation.clients_per_round": 5,
        "federation.local_steps": args.local_steps,
        "federation.batch_size": 8,
        "eval.max_clients": "null",
        "eval.max_batches_per_client": "null",
        "eval.batch_size": 64,
    }


def run(overrides: dict[str, Any]) -> dict[str, Any]:
    config = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    model, data = prepare(config)
    sim = build_engine(config, model, data)
    state = sim.init_state()
    losses, errors, worst, down = [], [], 0.0, 0
    while state.round < config.federation.rounds:
        state, rec = sim.run_round(state)
        losses.append(sim.evaluate(state.global_state, sim.client_ids)["eval_loss"])
        lora = (rec.get("server") or {}).get("lora") or {}
        if "mean_error" in lora:
            errors.append(lora["mean_error"])
            worst = max(worst, lora["max_error"])
        down += rec["bytes_down"]
    return {"losses": losses, "final_loss": losses[-1], "mean_error": float(np.mean(errors)) if errors else None,
            "max_error": worst if errors else None, "bytes_down": down}


def rounds_to(losses: list[float], target: float) -> int | None:
    return next((i + 1 for i, x in enumerate(losses) if x <= target), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.5, help="local SGD lr (part 1)")
    ap.add_argument("--lora-lr", type=float, default=5e-3, help="local AdamW lr (part 2)")
    ap.add_argument("--target-loss", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset of part 1")
    ap.add_argument("--lora-methods", default=",".join(LORA_METHODS), help="comma-separated subset of part 2 ('' skips it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unknown = sorted(set(filter(None, args.algorithms.split(","))) - set(ALGORITHMS))
    unknown += sorted(set(filter(None, args.lora_methods.split(","))) - set(LORA_METHODS))
    if unknown:
        ap.error(f"unknown {unknown}; part 1 has {list(ALGORITHMS)}, part 2 {list(LORA_METHODS)}")
    algorithms = {k: v for k, v in ALGORITHMS.items() if k in args.algorithms.split(",")}
    lora_methods = [m for m in LORA_METHODS if m in args.lora_methods.split(",")]
    alphas, lora_alphas = ALPHAS, LORA_ALPHAS
    if args.quick:
        args.rounds, args.local_steps = 2, 2
        algorithms = {k: ALGORITHMS[k] for k in ("fedavg", "scaffold")}
        alphas, lora_alphas = (0.1,), (0.1,)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_topics(Path(tmp) / "topics.jsonl")
        part1: dict[str, dict[float, dict[str, Any]]] = {}
        for name, extra in algorithms.items():
            for alpha in alphas:
                o = {**base_overrides(args, data, alpha), "lora.enabled": "false", "local.optimizer": "sgd",
                     "federation.lr": args.lr, **extra}
                part1.setdefault(name, {})[alpha] = run(o)
                print(f"{name} alpha={alpha}: {part1[name][alpha]['final_loss']:.4f}", file=sys.stderr, flush=True)
        part2: dict[str, dict[float, dict[str, Any]]] = {}
        for method in lora_methods:
            for alpha in lora_alphas:
                o = {**base_overrides(args, data, alpha), "federation.lr": args.lora_lr, "aggregation.lora": method}
                part2.setdefault(method, {})[alpha] = run(o)
                print(f"lora {method} alpha={alpha}: {part2[method][alpha]}", file=sys.stderr, flush=True)
    iid = max(alphas)
    target = args.target_loss or 1.05 * min(part1[n][iid]["final_loss"] for n in part1)
    table_loss = {n: {str(a): round(r["final_loss"], 4) for a, r in by.items()} for n, by in part1.items()}
    table_rounds = {n: {str(a): rounds_to(r["losses"], target) for a, r in by.items()} for n, by in part1.items()}
    lora_table = {m: {str(a): {"final_loss": round(r["final_loss"], 4), "mean_error": r["mean_error"],
                               "max_error": r["max_error"], "bytes_down": r["bytes_down"]} for a, r in by.items()}
                  for m, by in part2.items()}
    result = {"rounds": args.rounds, "local_steps": args.local_steps, "target_loss": round(target, 4),
              "table_loss": table_loss, "table_rounds": table_rounds, "lora_table": lora_table,
              "curves": {n: {str(a): r["losses"] for a, r in by.items()} for n, by in part1.items()},
              "seconds": time.perf_counter() - t0, "quick": args.quick}
    if args.quick:  # a smoke check: no row in BENCHMARKS.md
        sys.stdout.write(json.dumps(result) + "\n")
        return
    with contextlib.redirect_stdout(io.StringIO()):  # one table row per algorithm / method
        for name in part1:
            row = {"algorithm": name, "rounds": args.rounds, "target_loss": round(target, 4)}
            for a in alphas:
                row[f"loss_a{a:g}"] = table_loss[name][str(a)]
                row[f"rounds_a{a:g}"] = table_rounds[name][str(a)] or f">{args.rounds}"
            finish("algorithms", row, columns=["algorithm", "rounds", "target_loss",
                                               *[f"loss_a{a:g}" for a in alphas], *[f"rounds_a{a:g}" for a in alphas]])
        for method, by in lora_table.items():
            row = {"lora": method, "rounds": args.rounds}
            cols = ["lora", "rounds"]
            for a, r in by.items():
                for k in ("final_loss", "mean_error", "max_error", "bytes_down"):
                    row[f"{k}_a{float(a):g}"] = r[k]
                    cols.append(f"{k}_a{float(a):g}")
            finish("lora_aggregation", row, columns=cols)
    sys.stdout.write(json.dumps({"benchmark": "algorithms", **result}) + "\n")

if __name__ == "__main__":
    main()
