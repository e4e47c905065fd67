"""Federated algorithms under label skew, and LoRA-aware aggregation, side by side.

Part 1, optimisers: FedAvg, FedAvgM, FedProx, SCAFFOLD, FedAdam and FedYogi, each at
Dirichlet alpha in {0.1, 1, 100} (alpha = 100 is nearly IID, 0.1 gives most clients one or
two topics). Every run trains the same random ``tiny-llama`` (all weights, local plain SGD,
as in the FedProx and SCAFFOLD papers) from the same init, on the same clients, seeded
cohorts and steps; only the algorithm differs. Reported: final test loss (the test half of
every client's held-out sequences, so every topic counts) and the rounds until the test
loss first falls to the target, ``--target-loss`` (default: 1.05 x the best final test loss
at alpha = 100, so the IID runs define what is reachable).

Part 2, LoRA aggregation: naive (A and B averaged separately), exact (FedEx-LoRA: residual
folded into the frozen base, its bytes counted) and ffa (A frozen), with LoRA r = 8 on a
``tiny-llama`` base and local AdamW, at alpha in {0.1, 1}. Reported: final test loss,
the aggregation error ||mean(BA) - applied dW||_F / ||mean(BA)||_F (mean over layers and
rounds, and the worst layer-round), and bytes down.

Data: synthetic topic text written on the fly (8 topics, each its own 40-word Zipfian
vocabulary plus shared function words; ``topic`` is the Dirichlet label), 10 clients, 5
per round. The 24 runs took 18 minutes on 2 CPU cores shared with other jobs (one torch
thread), before the 6 tuning runs below were added; `--rounds` and `--local-steps` shrink it.

**Splits and seeds.** Every client's held-out sequences (``data.heldout_fraction`` 0.2, a
seeded draw) are cut in two fixed halves (:func:`benchmarks._lm.split_heldout`):
*validation* (even positions) and *test* (odd positions). Tuned on validation: FedAdam's
and FedYogi's server (lr, tau) over ``SERVER_GRID`` at alpha = 1 (the lowest final
validation loss); the chosen run is that optimiser's alpha = 1 row. Fixed in advance:
everything else (local SGD lr ``--lr``, LoRA lr ``--lora-lr``, FedAvgM's momentum,
FedProx's mu, rounds, steps, cohorts, batch, seq_len). Every figure is on test, and the
target loss is read off the test curves (1.05 x the best final test loss at alpha = 100,
a reference level, not a choice among settings); ``--report-on validation`` fails loudly.
``--seeds`` (default one seed, 0): a seed draws the corpus, the Dirichlet split, the
held-out rows, the init, cohorts and batches; each seed is tuned and reported on its own.

    python -m benchmarks.algorithms [--quick] [--rounds 15] [--target-loss X] [--seeds 0]
        [--report-on test]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._lm import example_losses, split_heldout
from benchmarks._record import SplitRule, add_report_on, finish
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
    "fedadam": {"server_opt.name": "fedadam"},  # server lr and tau: chosen on validation
    "fedyogi": {"server_opt.name": "fedyogi"},
}
SERVER_GRID = ((3e-3, 1e-4), (1e-2, 1e-3), (3e-2, 1e-2), (1e-1, 1e-1))  # (server lr, tau)
TUNED = ("fedadam", "fedyogi")
TUNE_ALPHA = 1.0
LORA_METHODS = ("naive", "exact", "ffa")
LORA_ALPHAS = (0.1, 1.0)
FUNCTION_WORDS = ["the", "a", "of", "and", "to", "in", "is", "that", "it", "for"]
SPLITS = SplitRule(
    validation="held-out sequences, even positions (validation half)",
    test="held-out sequences, odd positions (test half)",
    seeds=(0,),
    tuned=("fedadam server lr and tau", "fedyogi server lr and tau"),
    fixed=("local SGD lr 0.5, LoRA AdamW lr 5e-3", "fedavgm server lr 1, momentum 0.9", "fedprox mu 0.01",
           "15 rounds x 10 local steps, 5 of 10 clients, batch 8", "seq_len 32", "LoRA r 8"),
)


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


def heldout_loss(model, view, state) -> float:
    """Token-weighted mean loss of ``state`` over every client's held-out sequences in ``view``."""
    model.set_state(state)
    rows = [ex for cid in view.ids() for ex in view.clients[cid].heldout]
    return example_losses(model.model, rows, pad_id=model.tokenizer.pad_token_id, batch_size=64).mean_loss


def run(overrides: dict[str, Any]) -> dict[str, Any]:
    """One federated run; the held-out loss of both halves after every round."""
    config = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    model, data = prepare(config)
    val, test = split_heldout(data)
    sim = build_engine(config, model, test)  # the training rows are the same in both views
    state = sim.init_state()
    losses, val_losses, errors, worst, down = [], [], [], 0.0, 0
    while state.round < config.federation.rounds:
        state, rec = sim.run_round(state)
        losses.append(heldout_loss(model, test, state.global_state))
        val_losses.append(heldout_loss(model, val, state.global_state))
        lora = (rec.get("server") or {}).get("lora") or {}
        if "mean_error" in lora:
            errors.append(lora["mean_error"])
            worst = max(worst, lora["max_error"])
        down += rec["bytes_down"]
    return {"losses": losses, "final_loss": losses[-1], "final_val_loss": val_losses[-1],
            "mean_error": float(np.mean(errors)) if errors else None, "max_error": worst if errors else None,
            "bytes_down": down}


def rounds_to(losses: list[float], target: float) -> int | None:
    return next((i + 1 for i, x in enumerate(losses) if x <= target), None)


def run_seed(args: argparse.Namespace, seed: int, algorithms: dict[str, dict[str, Any]], lora_methods: list[str],
             alphas: tuple[float, ...], lora_alphas: tuple[float, ...], grid: tuple) -> dict[str, Any]:
    """Both parts for one seed: FedAdam/FedYogi tuned on validation first, everything reported on test."""
    seeded = {"model.seed": seed, "data.seed": seed, "federation.seed": seed}
    tune_alpha = TUNE_ALPHA if TUNE_ALPHA in alphas else alphas[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_topics(Path(tmp) / "topics.jsonl", seed=seed)
        part1: dict[str, dict[float, dict[str, Any]]] = {}
        chosen: dict[str, Any] = {}
        for name, extra in algorithms.items():
            def part1_overrides(alpha: float, extra=extra) -> dict[str, Any]:
                return {**base_overrides(args, data, alpha), **seeded, "lora.enabled": "false",
                        "local.optimizer": "sgd", "federation.lr": args.lr, **extra}

            if name in TUNED:  # the grid at tune_alpha, compared on the validation half only
                tried = {(lr, tau): run({**part1_overrides(tune_alpha), "server_opt.lr": lr, "server_opt.tau": tau})
                         for lr, tau in grid}
                best = min(tried, key=lambda k: tried[k]["final_val_loss"])
                chosen[name] = {"server_lr": best[0], "tau": best[1],
                                "val_loss": {f"{lr:g}/{tau:g}": r["final_val_loss"] for (lr, tau), r in tried.items()}}
                extra = {**extra, "server_opt.lr": best[0], "server_opt.tau": best[1]}
                part1[name] = {tune_alpha: tried[best]}  # its test curve was not looked at for the choice
                print(f"seed {seed} {name}: chose server lr {best[0]:g}, tau {best[1]:g}", file=sys.stderr, flush=True)
            for alpha in alphas:
                if alpha not in part1.setdefault(name, {}):
                    part1[name][alpha] = run(part1_overrides(alpha, extra))
                print(f"seed {seed} {name} alpha={alpha}: {part1[name][alpha]['final_loss']:.4f}", file=sys.stderr,
                      flush=True)
        part2: dict[str, dict[float, dict[str, Any]]] = {}
        for method in lora_methods:
            for alpha in lora_alphas:
                o = {**base_overrides(args, data, alpha), **seeded, "federation.lr": args.lora_lr,
                     "aggregation.lora": method}
                part2.setdefault(method, {})[alpha] = run(o)
                print(f"seed {seed} lora {method} alpha={alpha}: {part2[method][alpha]}", file=sys.stderr, flush=True)
    part1 = {n: {a: by[a] for a in alphas} for n, by in part1.items()}  # alpha order
    iid = max(alphas)
    target = args.target_loss or 1.05 * min(part1[n][iid]["final_loss"] for n in part1)
    return {
        "seed": seed, "target_loss": round(target, 4), "chosen": chosen,
        "table_loss": {n: {str(a): round(r["final_loss"], 4) for a, r in by.items()} for n, by in part1.items()},
        "table_rounds": {n: {str(a): rounds_to(r["losses"], target) for a, r in by.items()} for n, by in part1.items()},
        "lora_table": {m: {str(a): {"final_loss": round(r["final_loss"], 4), "mean_error": r["mean_error"],
                                    "max_error": r["max_error"], "bytes_down": r["bytes_down"]} for a, r in by.items()}
                       for m, by in part2.items()},
        "curves": {n: {str(a): r["losses"] for a, r in by.items()} for n, by in part1.items()},
    }


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
    ap.add_argument("--seeds", default="0", help="each seed is tuned and reported on its own")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    seeds = [int(x) for x in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    unknown = sorted(set(filter(None, args.algorithms.split(","))) - set(ALGORITHMS))
    unknown += sorted(set(filter(None, args.lora_methods.split(","))) - set(LORA_METHODS))
    if unknown:
        ap.error(f"unknown {unknown}; part 1 has {list(ALGORITHMS)}, part 2 {list(LORA_METHODS)}")
    algorithms = {k: v for k, v in ALGORITHMS.items() if k in args.algorithms.split(",")}
    lora_methods = [m for m in LORA_METHODS if m in args.lora_methods.split(",")]
    alphas, lora_alphas, grid = ALPHAS, LORA_ALPHAS, SERVER_GRID
    if args.quick:
        args.rounds, args.local_steps = 2, 2
        algorithms = {k: ALGORITHMS[k] for k in ("fedavg", "scaffold", "fedadam")}
        alphas, lora_alphas, grid = (0.1,), (0.1,), SERVER_GRID[:2]
    t0 = time.perf_counter()
    runs = [run_seed(args, s, algorithms, lora_methods, alphas, lora_alphas, grid) for s in seeds]
    rule = replace(SPLITS, seeds=tuple(seeds))  # the seeds this run ran
    result = {"rounds": args.rounds, "local_steps": args.local_steps, "seeds": seeds, "runs": runs,
              "seconds": time.perf_counter() - t0, "quick": args.quick}
    if args.quick:  # a smoke check: no row in BENCHMARKS.md
        sys.stdout.write(json.dumps({"splits": rule.describe(), "reported_on": split, **result}) + "\n")
        return
    rule_fields = {"splits": rule.as_dict(), "reported_on": split}
    with contextlib.redirect_stdout(io.StringIO()):  # one table row per seed and algorithm / method
        for r in runs:
            for name in r["table_loss"]:
                c = r["chosen"].get(name)
                row = {"algorithm": name, "seed": r["seed"], "rounds": args.rounds, "target_loss": r["target_loss"],
                       "chosen": f"server lr {c['server_lr']:g}, tau {c['tau']:g}" if c else "fixed", **rule_fields}
                for a in alphas:
                    row[f"loss_a{a:g}"] = r["table_loss"][name][str(a)]
                    row[f"rounds_a{a:g}"] = r["table_rounds"][name][str(a)] or f">{args.rounds}"
                finish("algorithms", row, columns=["algorithm", "seed", "rounds", "target_loss", "chosen",
                                                   *[f"loss_a{a:g}" for a in alphas],
                                                   *[f"rounds_a{a:g}" for a in alphas]])
            for method, by in r["lora_table"].items():
                row = {"lora": method, "seed": r["seed"], "rounds": args.rounds, **rule_fields}
                cols = ["lora", "seed", "rounds"]
                for a, x in by.items():
                    for k in ("final_loss", "mean_error", "max_error", "bytes_down"):
                        row[f"{k}_a{float(a):g}"] = x[k]
                        cols.append(f"{k}_a{float(a):g}")
                finish("lora_aggregation", row, columns=cols)
    sys.stdout.write(json.dumps({"benchmark": "algorithms", "splits": rule.describe(), "reported_on": split,
                                 **result}) + "\n")


if __name__ == "__main__":
    main()
