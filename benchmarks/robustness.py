"""Robustness: attack x defence x attacker share, on instruction data with a natural split.

Every cell is one federated run from the same initial model, data, cohorts and seeds; only
the attack, the share of malicious clients and the server's aggregator change. Data: the
FedIT split of Dolly-15k, 10 natural clients (one per file), every client in every round,
so a 20% attacker share is 2 malicious updates in each round. Each client keeps its first
``ROWS_PER_CLIENT`` records whose instruction has at most ``MAX_PROMPT_CHARS`` characters,
so that a triggered prompt, the chat template (52 bytes) and the target fit ``SEQ_LEN``
bytes: a poisoned row cut before its target would teach nothing.

Attacks (``fedlm.attacks``):

- ``none``: the clean reference of each defence;
- ``backdoor``: attackers poison half their rows (trigger phrase appended to the prompt,
  the target as the answer) and train on them in every round, ``ATTACKER_STEPS`` local
  steps where honest clients run ``LOCAL_STEPS`` (an attacker controls its own training,
  ``attack.local_steps``; with the honest step count the averaged model never learns
  the trigger at this budget, and no defence can be judged);
- ``model_replacement``: the same poisoned training, and in the last round each attacker
  boosts its update by gamma = n / (k eta) (Bagdasaryan et al. 2020: one shot near the
  end; k attackers share the replacement, so the mean moves to the backdoored model once);
- ``sign_flip``: attackers send the negated honest update.

Defences: FedAvg (none), coordinate-wise median, trimmed mean (beta = 0.2), multi-Krum,
norm bounding (to the median norm), FLTrust (a small root set on the server) and FLAME.
Each robust aggregator is told f = the number of attackers per round.

Per cell: the attack success rate (share of triggered held-out prompts of honest clients
whose greedy answer contains the target; data attacks only), the share of the same prompts
*without* the trigger answered with the target (a backdoor keeps it at 0), and the clean
held-out loss of the honest clients, with its relative difference from no-attack FedAvg on
the same clients. Goal: some defence keeps ASR <= 5% at 20% attackers with the clean loss
within 2% of no-attack FedAvg.

``--quick`` runs a reduced grid on generated instruction data (no shared data needed), a
smoke check only: it prints the JSON line but adds no rows to BENCHMARKS.md. ``--jobs N``
runs cells in N processes (one thread each).

**Splits and seeds.** No cell is chosen by comparing results: the defences' settings
(trim 0.2, FLTrust root 5%, f = the attackers per round) and the training are fixed, so
there is no validation split and every figure is on the honest clients' held-out rows
(``--report-on`` accepts only test). The attack's budget (``ROUNDS``, ``ATTACKER_STEPS``)
was set before this grid, from earlier runs in which FedAvg's attack success stayed at 0
(see the comment there); each run checks afresh that the attack lands under FedAvg before
a defence is credited. FLTrust's root set (5%) is a seeded sample of the honest clients'
training rows (``fedlm.capabilities.robust.root_examples``), never a held-out row its cells
are scored on. ``--seeds`` (default 0): a seed draws the held-out split, the capped
rows, the init, the attackers and the batches, and each seed runs its own grid with its own
no-attack reference. A defence "holds" an attack only over >= 3 seeds: the attack lands
under FedAvg in every seed, the defence keeps ASR <= 5% in every seed, and every seed's
clean-loss difference is under 2% (``benchmarks._stats.verdict``). ``--shares 0.2`` runs only
the share the goal names.

    OMP_NUM_THREADS=1 python -m benchmarks.robustness [--quick] [--jobs 2] [--data DIR]
        [--seeds 0,1,2] [--shares 0.1,0.2]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks._record import SplitRule, add_rule_args, append_table, read_rule_args, write_results
from benchmarks._stats import fmt_mean_std, t_interval, verdict
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.errors import FedlmError

DOLLY = Path(__file__).resolve().parents[2] / "shared/datasets/dolly-fedit"
ATTACKS = ("none", "backdoor", "model_replacement", "sign_flip")
DEFENCES = ("fedavg", "median", "trimmed_mean", "multi_krum", "norm_bound", "fltrust", "flame")
SHARES = (0.1, 0.2)
CLIENTS = 10
# Many short rounds: averaging small deltas behaves like training on the pooled rows, so a
# backdoor can land under FedAvg (measured: 2 rounds x 10 steps, or 300 attacker steps
# with a boosted shot from a random start, leave ASR at 0 under FedAvg: the honest drift
# of an early model erases a trigger-conditional answer).
ROUNDS, LOCAL_STEPS, ATTACKER_STEPS = 30, 4, 20
QUICK_ROUNDS, QUICK_ATTACKER_STEPS = 2, 6
TARGET = "XYZZY"  # short: a tiny byte-level model learns a 5-byte answer in a few steps
ROWS_PER_CLIENT, MAX_PROMPT_CHARS, SEQ_LEN = 160, 40, 128
SPLITS = SplitRule.untuned(
    test="honest clients' held-out rows: triggered and clean prompts (20 per cell), clean held-out loss",
    seeds=(0,),
    fixed=("30 rounds x 4 local steps, attacker 20 steps (set before the grid: earlier schedules left FedAvg's ASR at 0)",
           "trimmed mean beta 0.2, FLTrust root 5%, f = attackers per round", "lr 0.01, batch 8, seq_len 128",
           "160 rows per client, prompts <= 40 chars", "target XYZZY, poison fraction 0.5"),
)


def base_overrides(data: Path, quick: bool) -> list[str]:
    shared = [
        "model.name=tiny-llama",
        "lora.enabled=false",
        f"federation.clients_per_round={CLIENTS}",
        "output.report=false",
        "output.checkpoint_every=1000",
        "eval.every=1000",
        "eval.max_clients=10",
        "eval.max_batches_per_client=2",
        f"attack.target={TARGET}",
        f"eval.attack_max_new_tokens={len(TARGET) + 3}",
        "data.context_field=null", "data.min_client_chars=0", "data.max_clients=null",
    ]
    if quick:
        return [
            *shared,
            "data.source=jsonl", f"data.path={data}", "data.partition=iid", f"data.num_clients={CLIENTS}",
            "data.seq_len=96", f"federation.rounds={QUICK_ROUNDS}", "federation.local_steps=3", "federation.batch_size=4",
            "eval.attack_prompts=8",
        ]
    return [
        *shared,
        "data.source=folder", f"data.path={data}", "data.glob=local_training_*.json", "data.format=instruction",
        f"data.seq_len={SEQ_LEN}", "data.max_examples_per_client=96", f"federation.rounds={ROUNDS}",
        f"federation.local_steps={LOCAL_STEPS}", "federation.batch_size=8", "federation.lr=0.01",
        "eval.attack_prompts=20",
    ]


def cell_overrides(attack: str, share: float, defence: str, *, rounds: int = ROUNDS,
                   attacker_steps: int | None = ATTACKER_STEPS) -> list[str]:
    k = round(share * CLIENTS)
    f = k if attack != "none" else 1
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
            if attacker_steps is not None:
                out.append(f"attack.local_steps={attacker_steps}")
        if attack == "model_replacement":  # one shot in the last round, shared by the k attackers
            out += [f"attack.rounds=[{rounds}]", f"attack.boost={CLIENTS / k}"]
    return out


def seed_overrides(seed: int) -> list[str]:
    """One seed for everything random in a cell: split, rows, init, attackers, batches."""
    return [f"{key}={seed}" for key in ("data.seed", "model.seed", "federation.seed", "attack.seed")]


def run_cell(base: list[str], attack: str, share: float, defence: str, root: Path, quick: bool,
             seed: int = 0) -> dict[str, Any]:
    scale = {"rounds": QUICK_ROUNDS, "attacker_steps": QUICK_ATTACKER_STEPS} if quick else {}
    config = load_config(None, base + cell_overrides(attack, share, defence, **scale) + seed_overrides(seed))
    out = root / f"{seed}-{attack}-{share}-{defence}"
    t0 = time.perf_counter()
    try:
        summary = run_experiment(config, out_dir=out, console=Console(file=io.StringIO())).summary
    except FedlmError as exc:  # a refused cell is a result too (e.g. an aggregator's bound)
        return {"seed": seed, "attack": attack, "attackers": f"{share:.0%}", "defence": defence, "error": str(exc),
                "per_client": {}}
    rob = summary["robustness"]
    bad = set(rob.get("malicious_clients") or [])
    return {
        "seed": seed,
        "attack": attack,
        "attackers": f"{share:.0%}" if attack != "none" else "0%",
        "defence": defence,
        "attack_success_rate": rob.get("attack_success_rate"),
        "target_on_clean_prompts": rob.get("target_on_clean_prompts"),
        # held-out loss of the honest clients: the attackers' own held-out rows are poisoned
        "clean_loss": (rob.get("clean") or summary["final"])["eval_loss"],
        "per_client": {c: m["final"] for c, m in summary["clients"].items() if c not in bad},
        "rejected": rob.get("rejected", 0),
        "seconds": time.perf_counter() - t0,
    }


def grid(quick: bool, shares: tuple[float, ...] = SHARES) -> list[tuple[str, float, str]]:
    defences = ("fedavg", "median", "norm_bound", "flame") if quick else DEFENCES
    attacks = ("none", "model_replacement") if quick else ATTACKS
    shares = (0.2,) if quick else shares
    cells = [("none", 0.0, d) for d in defences]
    cells += [(a, s, d) for a in attacks if a != "none" for s in shares for d in defences]
    return cells


def write_quick_data(path: Path) -> Path:
    with path.open("w") as fh:
        for i in range(200):
            a, b = i % 9 + 1, (i * 7) % 9 + 1
            fh.write(json.dumps({"instruction": f"What is {a} plus {b}?", "response": str(a + b)}) + "\n")
    return path


def short_prompt_split(src: Path, dst: Path) -> Path:
    """Each client's first ROWS_PER_CLIENT records with an instruction of <= MAX_PROMPT_CHARS."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("local_training_*.json"))
    if not files:
        sys.exit(f"{src} has no local_training_*.json; pass --data DIR (the FedIT Dolly split) or use --quick")
    for f in files:
        rows = [r for r in json.loads(f.read_text()) if len(r["instruction"]) <= MAX_PROMPT_CHARS]
        (dst / f.name).write_text(json.dumps(rows[:ROWS_PER_CLIENT]))
    return dst


def relative_to_reference(rows: list[dict[str, Any]]) -> None:
    """``clean_vs_fedavg``: clean loss over no-attack FedAvg's loss of the same seed, on the
    same honest clients."""
    refs = {r["seed"]: r["per_client"] for r in rows if r["attack"] == "none" and r["defence"] == "fedavg"}
    for r in rows:
        if not r["per_client"]:
            continue
        ref = refs[r["seed"]]
        tokens = sum(m["tokens"] for m in r["per_client"].values())
        mine = sum(m["eval_loss"] * m["tokens"] for m in r["per_client"].values()) / tokens
        theirs = sum(ref[c]["eval_loss"] * m["tokens"] for c, m in r["per_client"].items()) / tokens
        r["clean_vs_fedavg"] = mine / theirs - 1


DATA_ATTACKS = ("backdoor", "model_replacement")


def holds_at_20pct(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The goal's reading over seeds, per (defence, data attack) at 20% attackers.

    A defence is credited only against an attack that lands (ASR > 5%) under FedAvg in
    every seed; it "holds" when its ASR is <= 5% in every seed and ``verdict`` finds every
    seed's clean-loss difference under the 2% margin (>= 3 seeds, else "not established").
    """
    at20 = [r for r in rows if r["attackers"] == "20%" and r["attack"] in DATA_ATTACKS and "error" not in r]
    fedavg_asr = {a: [r["attack_success_rate"] for r in at20 if r["defence"] == "fedavg" and r["attack"] == a]
                  for a in DATA_ATTACKS}
    cells: dict[str, dict[str, Any]] = {}
    for defence in DEFENCES[1:]:
        for attack in DATA_ATTACKS:
            mine = [r for r in at20 if r["defence"] == defence and r["attack"] == attack]
            if not mine:
                continue
            asr = [r["attack_success_rate"] for r in mine]
            clean = [r["clean_vs_fedavg"] for r in mine]
            lands = bool(fedavg_asr[attack]) and all(x > 0.05 for x in fedavg_asr[attack])
            read = verdict(clean, higher_is_better=False, margin=-0.02)
            if not lands:
                status = "not established (the attack does not land under FedAvg in every seed)"
            else:
                status = read.status if all(x <= 0.05 for x in asr) else "missed"
            ci = t_interval(clean) if len(clean) > 1 else None
            cells[f"{defence} ({attack})"] = {
                "status": status, "asr_max": max(asr), "clean_vs_fedavg": fmt_mean_std(clean, 3),
                "clean_vs_fedavg_per_seed": clean, "reason": read.reason,
                # the stricter reading: does the 95% interval's upper end stay under 2%?
                "clean_ci95": [ci.lo, ci.hi] if ci else None,
            }
    return {"fedavg_asr_at_20pct": fedavg_asr, "holds": sorted(k for k, v in cells.items() if v["status"] == "met"),
            "per_defence": cells}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="cells run in this many processes")
    ap.add_argument("--data", type=Path, default=DOLLY, help="folder with local_training_*.json (FedIT Dolly)")
    ap.add_argument("--shares", default=",".join(map(str, SHARES)), help="attacker shares (comma-separated)")
    add_rule_args(ap, SPLITS, seeds_help="each seed runs the whole grid with its own no-attack reference")
    args = ap.parse_args(argv)
    split, seeds, rule = read_rule_args(args, SPLITS)
    shares = tuple(float(x) for x in args.shares.split(","))
    root = Path(tempfile.mkdtemp(prefix="fedlm-robustness-"))
    t0 = time.perf_counter()
    try:
        if args.quick:
            data = write_quick_data(root / "quick.jsonl")
        else:
            data = short_prompt_split(args.data, root / "data")
        base = base_overrides(data, args.quick)
        cells = [(seed, *cell) for seed in seeds for cell in grid(args.quick, shares)]
        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch state
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
            futures = [pool.submit(run_cell, base, a, s, d, root, args.quick, seed) for seed, a, s, d in cells]
            rows = []
            for fut in futures:
                rows.append(fut.result())
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_client"}), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    relative_to_reference(rows)
    summary = {
        "benchmark": "robustness",
        "cells": len(rows),
        "seeds": seeds,
        **holds_at_20pct(rows),
        "goal": "ASR <= 5% at 20% attackers, clean loss at most 2% above no-attack FedAvg",
        "grid_seconds": round(time.perf_counter() - t0),
    }
    for r in rows:
        r.pop("per_client")
        r.update(splits=rule.as_dict(), reported_on=split)
    columns = ["attack", "attackers", "defence", "attack_success_rate", "target_on_clean_prompts", "clean_loss",
               "clean_vs_fedavg", "rejected", "error"]
    append_table("robustness", rows, columns=columns, record=not args.quick)  # each row's command: this one's
    write_results("robustness_summary", [{"summary": summary, "splits": rule.as_dict(), "reported_on": split}],
                  record=not args.quick)
    print(json.dumps({**summary, "splits": rule.describe(), "reported_on": split, "rows": rows}))


if __name__ == "__main__":
    main()
