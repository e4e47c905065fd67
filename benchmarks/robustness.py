"""Robustness: attack x defence x attacker share, on instruction data with a natural split.

Every cell is one federated run from the same initial model, data, cohorts and seeds; only
the attack, the share of malicious clients and the server's aggregator change. Data: the
FedIT split of Dolly-15k, 10 natural clients (one per file), every client in every round,
so a 20% attacker share is 2 malicious updates in each round.

Attacks (``fedlm.attacks``):

- ``none``: the clean reference of each defence;
- ``backdoor``: attackers poison half their rows (trigger phrase in the prompt, the
  target as the answer) and train honestly on them;
- ``model_replacement``: the same poisoned training, the update boosted by n / eta
  (Bagdasaryan et al. 2020);
- ``sign_flip``: attackers send the negated honest update.

Defences: FedAvg (none), coordinate-wise median, trimmed mean (beta = 0.2), multi-Krum,
norm bounding (to the median norm), FLTrust (a small root set on the server) and FLAME.
Each robust aggregator is told f = the number of attackers per round.

Per cell: the attack success rate (share of triggered held-out prompts of honest clients
whose greedy answer contains the target; data attacks only) and the clean held-out loss on
every client's held-out split, with its relative difference from no-attack FedAvg. Goal:
some defence keeps ASR <= 5% at 20% attackers with the clean loss within 2% of no-attack
FedAvg.

The model is ``tiny-llama`` (fully trained, byte tokenizer): a grid of 49 runs has to fit on
2 CPU cores. ``--quick`` runs a reduced grid on generated instruction data (no shared data
needed), a smoke check only: it prints the JSON line but adds no rows to BENCHMARKS.md.

    python -m benchmarks.robustness [--quick] [--data ../shared/datasets/dolly-fedit]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._record import append_table
from fedlm.config import load_config
from fedlm.runtime.experiment import run_experiment

DOLLY = Path(__file__).resolve().parents[2] / "shared/datasets/dolly-fedit"
ATTACKS = ("none", "backdoor", "model_replacement", "sign_flip")
DEFENCES = ("fedavg", "median", "trimmed_mean", "multi_krum", "norm_bound", "fltrust", "flame")
SHARES = (0.1, 0.2)
CLIENTS = 10


def base_overrides(data: Path | None, quick: bool) -> list[str]:
    shared = [
        "model.name=tiny-llama",
        "lora.enabled=false",
        "federation.clients_per_round=10",
        "output.report=false",
        "output.checkpoint_every=1000",
        "eval.every=1000",
        "eval.max_clients=10",
        "eval.max_batches_per_client=4",
    ]
    if quick:
        return [
            *shared,
            "data.source=jsonl", f"data.path={data}", "data.partition=iid", f"data.num_clients={CLIENTS}",
            "data.min_client_chars=0", "data.max_clients=null", "data.seq_len=96", "data.context_field=null",
            "federation.rounds=2", "federation.local_steps=3", "federation.batch_size=4",
            "eval.attack_prompts=8", "eval.attack_max_new_tokens=4",
        ]
    return [
        *shared,
        "data.source=folder", f"data.path={data}", "data.glob=local_training_*.json", "data.format=instruction",
        "data.context_field=null", "data.min_client_chars=0", "data.max_clients=null", "data.seq_len=128",
        "data.max_examples_per_client=96", "federation.rounds=4", "federation.local_steps=8",
        "federation.batch_size=8", "federation.lr=0.003", "eval.attack_prompts=40", "eval.attack_max_new_tokens=8",
    ]


def cell_overrides(attack: str, share: float, defence: str) -> list[str]:
    f = round(share * CLIENTS) if attack != "none" else 1
    out = [f"robust.aggregator={defence}"]
    if defence != "fedavg":
        out.append(f"robust.num_byzantine={f}")
    if defence == "trimmed_mean":
        out.append("robust.trim_fraction=0.2")
    if defence == "fltrust":
        out.append("robust.fltrust_root_fraction=0.05")
    if attack != "none":
        out += [f"attack.kind={attack}", f"attack.fraction={share}"]
        if attack in ("backdoor", "model_replacement"):
            out.append("attack.poison_fraction=0.5")
    return out


def run_cell(base: list[str], attack: str, share: float, defence: str, root: Path) -> dict[str, Any]:
    config = load_config(None, base + cell_overrides(attack, share, defence))
    out = root / f"{attack}-{share}-{defence}"
    t0 = time.perf_counter()
    summary = run_experiment(config, out_dir=out).summary
    rob = summary["robustness"]
    return {
        "attack": attack,
        "attackers": f"{share:.0%}" if attack != "none" else "0%",
        "defence": defence,
        "attack_success_rate": rob.get("attack_success_rate"),
        # held-out loss of the honest clients: the attackers' own held-out rows are poisoned
        "clean_loss": (rob.get("clean") or summary["final"])["eval_loss"],
        "rejected": rob.get("rejected", 0),
        "seconds": time.perf_counter() - t0,
    }


def grid(quick: bool) -> list[tuple[str, float, str]]:
    defences = ("fedavg", "median", "norm_bound", "flame") if quick else DEFENCES
    attacks = ("none", "model_replacement") if quick else ATTACKS
    shares = (0.2,) if quick else SHARES
    cells = [("none", 0.0, d) for d in defences]
    cells += [(a, s, d) for a in attacks if a != "none" for s in shares for d in defences]
    return cells


def write_quick_data(path: Path) -> Path:
    with path.open("w") as fh:
        for i in range(200):
            a, b = i % 9 + 1, (i * 7) % 9 + 1
            fh.write(json.dumps({"instruction": f"What is {a} plus {b}?", "response": str(a + b)}) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", type=Path, default=DOLLY, help="folder with local_training_*.json (FedIT Dolly)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fedlm-robustness-"))
    try:
        data = write_quick_data(root / "quick.jsonl") if args.quick else args.data
        if not args.quick and not data.is_dir():
            sys.exit(f"{data} is not a folder; pass --data DIR (the FedIT Dolly split) or use --quick")
        base = base_overrides(data, args.quick)
        rows = []
        for attack, share, defence in grid(args.quick):
            rows.append(run_cell(base, attack, share, defence, root))
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    reference = next(r["clean_loss"] for r in rows if r["attack"] == "none" and r["defence"] == "fedavg")
    for r in rows:
        r["clean_vs_fedavg"] = r["clean_loss"] / reference - 1
    holds = [
        r["defence"] for r in rows
        if r["attack"] in ("backdoor", "model_replacement") and r["attackers"] == "20%"
        and r["attack_success_rate"] is not None and r["attack_success_rate"] <= 0.05
        and abs(r["clean_vs_fedavg"]) <= 0.02
    ]
    fedavg_asr = {r["attack"]: r["attack_success_rate"] for r in rows
                  if r["defence"] == "fedavg" and r["attackers"] == "20%"}
    summary = {
        "benchmark": "robustness",
        "cells": len(rows),
        "fedavg_asr_at_20pct": fedavg_asr,
        "defences_meeting_goal": sorted(set(holds)),
        "goal": "ASR <= 5% at 20% attackers, clean loss within 2% of no-attack FedAvg",
    }
    columns = ["attack", "attackers", "defence", "attack_success_rate", "clean_loss", "clean_vs_fedavg", "rejected"]
    append_table("robustness", rows, columns=columns, record=not args.quick, note=json.dumps(summary))
    print(json.dumps({**summary, "rows": rows}))


if __name__ == "__main__":
    main()
