"""Personalisation on MedQuAD's 9 NIH sources, under the benchmark rule: who does each method serve?

Every method fine-tunes the same SmolLM2-135M-Instruct LoRA adapter (r = 8 on q/v) from the
same init on the same clients (one per MedQuAD source, instruction format, loss on the
answer). Each client is scored on its own held-out questions (perplexity of the answers).

- ``local_only``: each client trains alone (one AdamW run from the shared init).
- ``fedavg_global``: the FedAvg global adapter after the rounds.
- ``finetune``: that global adapter fine-tuned on each client's own rows.

**Splits.** Each client's held-out rows (``data.heldout_fraction``, a seeded sample) are cut
in two fixed halves (:func:`benchmarks._lm.split_heldout`): *validation* (even positions,
at most ``--val-cap`` per client) and *test* (odd positions, at most ``--test-cap``).
Tuned on validation, once for all clients (the setting with the lowest mean validation
loss over clients): ``local_only``'s lr and step count (its early stop) and ``finetune``'s
personal lr and step count, over ``--lrs`` x ``--steps-grid``. Fixed in advance, never
compared on any split: the federation (lr 3e-3, 6 rounds x 4 local steps, batch 2,
every client every round), 32 training rows per client, seq_len 96. Reported on test only;
``--report-on validation`` fails loudly.

**Seeds.** ``--seeds 0,1,2``: a seed draws new LoRA A matrices, new training rows, a new
held-out split and new batches (``model.seed``, ``data.seed``, ``federation.seed``).

**Goals** (each read by :func:`benchmarks._stats.verdict`: every seed on the right side and
a paired test over the pooled test questions significant at 5%):

1. federated beats local-only on the mean: FedAvg global's mean per-client perplexity below
   local-only's (and, reported apart, the federated pipeline with the personal step);
2. the best personalised method improves the worst 10% (of 9 clients: the worst client)
   over FedAvg global.

Raw rows: ``benchmarks/results/personalization.jsonl`` (one per seed, with every client's
validation grid and test perplexity).

    OMP_NUM_THREADS=1 python -m benchmarks.personalization [--quick] [--seeds 0,1,2]
        [--examples 32] [--jobs 3] [--report-on test] [--pool]

A seed takes 22 to 29 minutes on a 2-core AVX-512 machine (about three times that on an
AVX2-only one). Run seeds one at a time
(``--seeds S``, each records its row) and summarise them together with ``--seeds 0,1,2
--pool``, which reads the recorded rows of the same settings instead of training. A cut seed
resumes at the phase it was in: each finished phase (FedAvg, then each tuned method) is kept
in ``$TMPDIR/fedlm-personalization-phases`` (:func:`finished_phase`).

``--quick``: tiny-llama on 3 sources, one round (seconds; a smoke check, nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._lm import Losses, example_losses, split_heldout
from benchmarks._record import (
    SplitRule,
    add_report_on,
    command_line,
    kept,
    read_results,
    write_results,
)
from benchmarks._stats import fmt_mean_std, mean_std, paired_bootstrap, verdict
from fedlm.capabilities import build_engine
from fedlm.client.trainer import train_local
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.eval.fairness import fairness_stats
from fedlm.seeds import derive_seed

MEDQUAD = "../shared/datasets/medquad.jsonl"
NAME = "personalization"
PHASES = Path(tempfile.gettempdir()) / "fedlm-personalization-phases"  # finished phases: a cut seed resumes
METHODS = ("local_only", "fedavg_global", "finetune")
SPLITS = SplitRule(
    validation="MedQuAD held-out, even positions (validation half)",
    test="MedQuAD held-out, odd positions (test half)",
    seeds=(0, 1, 2),
    tuned=("local_only lr and steps", "finetune personal lr and steps"),
    fixed=("federation lr 3e-3, 6 rounds x 4 steps, batch 2", "32 training rows per client",
           "seq_len 96", "LoRA r 8 on q/v"),
)


def overrides(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "model.name": args.model, "model.device": args.device,
        "model.seed": seed, "data.seed": seed, "federation.seed": seed,
        "data.source": "jsonl", "data.path": args.medquad, "data.client_field": "source", "data.format": "instruction",
        "data.prompt_field": "question", "data.context_field": "null", "data.response_field": "answer",
        "data.max_clients": args.clients, "data.min_client_chars": 0, "data.seq_len": args.seq_len,
        "data.max_examples_per_client": args.examples, "data.heldout_fraction": args.heldout_fraction,
        "federation.rounds": args.rounds, "federation.clients_per_round": args.clients,
        "federation.local_steps": args.local_steps, "federation.batch_size": args.batch_size,
        "federation.lr": args.lr, "output.report": "false",
    }


def grid_run(model, data, views, start, *, lrs, steps, seed: int, salt: int, batch_size: int, fed) -> dict:
    """Train every client from ``start`` at each lr for max(steps) steps; at each step count
    in ``steps`` score the validation half and keep the adapter (test is scored only for the
    chosen setting). Returns ``{(lr, k): {"val": {cid: Losses}, "state": {cid: state}}}``."""
    val = views[0]
    pad = model.tokenizer.pad_token_id
    out: dict = {}
    for lr in lrs:
        for i, cid in enumerate(data.ids()):
            model.set_state(start)

            def after(done=[0], lr=lr, cid=cid) -> None:  # noqa: B006 (the step counter of this run)
                done[0] += 1
                if done[0] in steps:
                    cell = out.setdefault((lr, done[0]), {"val": {}, "state": {}})
                    cell["val"][cid] = example_losses(model.model, val.clients[cid].heldout, pad_id=pad)
                    cell["state"][cid] = model.get_state()

            train_local(model, data.clients[cid].train, steps=max(steps), batch_size=batch_size, lr=lr,
                        seed=derive_seed(seed, i, salt), weight_decay=fed.weight_decay,
                        max_grad_norm=fed.max_grad_norm, after_step=after)
    return out


def choose(grid: dict) -> tuple[tuple[float, int], dict[str, float]]:
    """The setting with the lowest mean over clients of the validation loss, and every setting's mean."""
    means = {k: float(np.mean([v.mean_loss for v in cell["val"].values()])) for k, cell in grid.items()}
    return min(means, key=means.get), {f"lr={k[0]:g},steps={k[1]}": m for k, m in means.items()}


# Settings a phase never reads, so changing them keeps its saved result: FedAvg is fixed in
# advance, and local-only's step grid is FedAvg's budget, not ``--steps-grid``.
_PHASE_IGNORES = {"fedavg_global": ("lrs", "steps_grid"), "local_only": ("steps_grid",)}


def finished_phase(args: argparse.Namespace, seed: int, phase: str, compute: Callable[[], dict]) -> dict:
    """``compute()``, or its saved result from an earlier run of this seed with the same settings (those the phase reads).

    A seed runs for about an hour in three phases (FedAvg, then each tuned method); each
    finished phase is saved to ``PHASES`` (tensors, numbers and strings only: read back with
    ``weights_only``), so a cut run resumes at the phase it was in. Nothing is saved or read
    for ``--quick`` or ``--no-record``."""
    design = {k: v for k, v in _design(vars(args)).items() if k not in _PHASE_IGNORES.get(phase, ())}
    key = json.dumps({"design": design, "data": str(vars(args).get("medquad")), "seed": seed,
                      "phase": phase}, sort_keys=True)  # the data file too: pooled rows leave its path out
    path = PHASES / f"{phase}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    return kept(path, compute, keep=not (args.quick or args.no_record))


def _packed(losses: dict[str, Losses]) -> dict[str, dict[str, torch.Tensor]]:
    return {c: {"nll": torch.from_numpy(v.nll), "tokens": torch.from_numpy(v.tokens)} for c, v in losses.items()}


def _unpacked(packed: dict[str, dict[str, torch.Tensor]]) -> dict[str, Losses]:
    return {c: Losses(v["nll"].numpy(), v["tokens"].numpy()) for c, v in packed.items()}


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One seed end to end; returns per-client validation and test figures of every method."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides(args, seed).items()])
    fed = cfg.federation
    with contextlib.redirect_stderr(io.StringIO()):
        model, data = prepare(cfg)
    val, test = split_heldout(data, cap=args.val_cap)[0], split_heldout(data, cap=args.test_cap)[1]
    views = (val, test)
    ids = data.ids()
    pad = model.tokenizer.pad_token_id
    init = model.get_state()

    def scored(view, state) -> dict[str, Losses]:
        model.set_state(state)
        return {cid: example_losses(model.model, view.clients[cid].heldout, pad_id=pad) for cid in ids}

    # FedAvg: fixed settings, nothing tuned.
    def fedavg() -> dict[str, Any]:
        sim = build_engine(cfg, model, data)
        state = sim.init_state()
        with contextlib.redirect_stderr(io.StringIO()):
            while state.round < fed.rounds:
                state, _ = sim.run_round(state)
        g = state.global_state
        return {"state": g, "test": _packed(scored(test, g)),
                "val": {c: v.mean_loss for c, v in scored(val, g).items()}}

    part = finished_phase(args, seed, "fedavg_global", fedavg)
    g = part["state"]
    tests: dict[str, dict[str, Losses]] = {"fedavg_global": _unpacked(part["test"])}
    vals: dict[str, Any] = {"fedavg_global": part["val"]}
    print(f"seed {seed}: fedavg done after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    chosen: dict[str, Any] = {}
    local_steps_total = fed.rounds * fed.local_steps
    grids = {
        "finetune": (g, args.steps_grid, 13),
        "local_only": (init, sorted({max(1, local_steps_total * j // 3) for j in (1, 2, 3)}), 11),
    }
    for method, (start, steps, salt) in grids.items():
        def tuned(start=start, steps=steps, salt=salt) -> dict[str, Any]:
            grid = grid_run(model, data, views, start, lrs=args.lrs, steps=set(steps), seed=seed, salt=salt,
                            batch_size=fed.batch_size, fed=fed)
            best, means = choose(grid)
            scores = {}
            for cid in ids:  # test scored once, for the chosen setting only
                model.set_state(grid[best]["state"][cid])
                scores[cid] = example_losses(model.model, test.clients[cid].heldout, pad_id=pad)
            return {"chosen": {"lr": best[0], "steps": best[1], "val_mean_loss": means},
                    "val": {c: v.mean_loss for c, v in grid[best]["val"].items()}, "test": _packed(scores)}

        part = finished_phase(args, seed, method, tuned)
        chosen[method], vals[method], tests[method] = part["chosen"], part["val"], _unpacked(part["test"])
        best = (chosen[method]["lr"], chosen[method]["steps"])
        print(f"seed {seed}: {method} chose {best} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    return {
        "seed": seed, "clients": ids, "chosen": chosen,
        "val_loss": vals,
        "test_ppl": {m: {c: v.perplexity for c, v in t.items()} for m, t in tests.items()},
        "test_items": {m: {c: v.per_example.tolist() for c, v in t.items()} for m, t in tests.items()},
        "test_counts": {c: len(test.clients[c].heldout) for c in ids},
        "val_counts": {c: len(val.clients[c].heldout) for c in ids},
        "seconds": time.perf_counter() - t0,
    }


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method mean ± std over seeds, and the two goals under the rule."""
    stats = {m: [fairness_stats(s["test_ppl"][m]) for s in seeds] for m in METHODS}
    table = []
    for m in METHODS:
        means = [x["mean"] for x in stats[m]]
        worst = [x["worst_10pct"] for x in stats[m]]
        table.append({"method": m, "mean_ppl": fmt_mean_std(means), "worst_10pct": fmt_mean_std(worst),
                      "worst_clients": ",".join(sorted({c for x in stats[m] for c in x["worst_clients"]})),
                      "chosen": "; ".join(f"s{s['seed']}: lr {s['chosen'][m]['lr']:g} x {s['chosen'][m]['steps']}"
                                          for s in seeds) if m in seeds[0]["chosen"] else "fixed"})

    def pooled(a: str, b: str, clients=None) -> Any:
        xa, xb = [], []
        for s in seeds:
            for c in clients(s) if clients else s["clients"]:
                xa += s["test_items"][a][c]
                xb += s["test_items"][b][c]
        return paired_bootstrap(xa, xb)

    def mean_diff(a: str, b: str) -> list[float]:
        return [sa["mean"] - sb["mean"] for sa, sb in zip(stats[a], stats[b])]

    def worst_diff(a: str, b: str) -> list[float]:
        return [sa["worst_10pct"] - sb["worst_10pct"] for sa, sb in zip(stats[a], stats[b])]

    def worst_of_fedavg(s: dict) -> list[str]:
        return fairness_stats(s["test_ppl"]["fedavg_global"])["worst_clients"]

    paired = {"fedavg_beats_local_mean": pooled("fedavg_global", "local_only"),
              "finetune_beats_local_mean": pooled("finetune", "local_only"),
              "finetune_improves_worst10_over_fedavg": pooled("finetune", "fedavg_global", worst_of_fedavg)}
    per_seed = {"fedavg_beats_local_mean": mean_diff("fedavg_global", "local_only"),
                "finetune_beats_local_mean": mean_diff("finetune", "local_only"),
                "finetune_improves_worst10_over_fedavg": worst_diff("finetune", "fedavg_global")}
    goals = {k: verdict(per_seed[k], paired=paired[k], higher_is_better=False) for k in paired}
    labels = {"fedavg_beats_local_mean": "fedavg-local mean", "finetune_beats_local_mean": "finetune-local mean",
              "finetune_improves_worst10_over_fedavg": "finetune-fedavg worst"}
    diffs = {labels[k]: fmt_mean_std(v) for k, v in per_seed.items()}
    return {"table": table, "goals": {k: str(v) for k, v in goals.items()},
            "goal_status": {k: v.status for k, v in goals.items()}, "diffs": diffs,
            # per test question, a - b in mean answer loss (nats per token), pooled over seeds
            "paired_answer_loss": {k: v.as_dict() for k, v in paired.items()},
            "per_seed": {m: [{"mean": x["mean"], "worst": x["worst_10pct"]} for x in stats[m]] for m in METHODS},
            "mean_of_means": {m: mean_std([x["mean"] for x in stats[m]])[0] for m in METHODS}}


# Settings that do not change what a seed measures: recorded runs that differ only in these pool.
_NOT_DESIGN = frozenset({"seeds", "jobs", "threads", "no_record", "pool", "medquad"})


def _design(settings: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in settings.items() if k not in _NOT_DESIGN}, default=str))


def pooled_runs(args: argparse.Namespace, seeds: list[int]) -> list[dict[str, Any]]:
    """The recorded runs of ``seeds`` with these settings (``--pool``), in ``seeds`` order.

    A seed costs 20 minutes to over an hour on 2 cores, so seeds run one at a time (each ``--seeds S``
    records its row) and pool later. Refuses a seed recorded twice with these settings or
    one not recorded at all."""
    want, found = _design(vars(args)), {}
    for row in read_results(NAME):
        if "seed_run" not in row or _design(row.get("settings", {})) != want:
            continue
        seed = row["seed_run"]["seed"]
        if seed in found:
            raise SystemExit(f"--pool: seed {seed} is recorded twice with these settings; keep one row of it")
        found[seed] = row["seed_run"]
    missing = [s for s in seeds if s not in found]
    if missing:
        raise SystemExit(f"--pool: no recorded run of seed(s) {missing} with these settings; "
                         f"run them first (--seeds {','.join(map(str, missing))})")
    return [found[s] for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--examples", type=int, default=32, help="training rows per client (fixed in advance)")
    ap.add_argument("--heldout-fraction", type=float, default=0.2, help="of each client's rows; halved into val/test")
    ap.add_argument("--val-cap", type=int, default=16, help="validation examples per client at most")
    ap.add_argument("--test-cap", type=int, default=32, help="test examples per client at most")
    ap.add_argument("--lr", type=float, default=3e-3, help="the federation's lr (fixed)")
    ap.add_argument("--lrs", default="1e-3,3e-3", help="lr grid of local_only and finetune (chosen on validation)")
    ap.add_argument("--steps-grid", default="4,8,12,16,24,32",
                    help="finetune's step grid (chosen on validation); 4,8,12 chose its edge in every seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--medquad", default=MEDQUAD)
    add_report_on(ap, SPLITS)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--pool", action="store_true", help="summarise the recorded runs of --seeds instead of running")
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.steps_grid = sorted({int(x) for x in args.steps_grid.split(",")})
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.quick:
        args.model, args.clients, args.rounds, args.local_steps, args.seq_len, args.examples = "tiny-llama", 3, 1, 2, 128, 8
        args.steps_grid, args.val_cap, args.test_cap = [1, 2], 4, 4
    t0 = time.perf_counter()
    if args.pool:
        runs = pooled_runs(args, seeds)
    elif args.jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(seeds)), mp_context=multiprocessing.get_context("spawn")) as pool:
            runs = list(pool.map(run_seed, [args] * len(seeds), seeds))
    else:
        runs = [run_seed(args, s) for s in seeds]
    summary = summarise(runs)
    cmd = command_line("personalization")
    record = not (args.quick or args.no_record)
    if not args.pool:  # pooled seeds are recorded already
        write_results(NAME, [{"seed_run": r, "splits": SPLITS.as_dict(), "reported_on": split,
                              "settings": {k: v for k, v in vars(args).items() if k != "medquad"}} for r in runs],
                      command=cmd, record=record)
    write_results(NAME + "_summary", [{"summary": summary, "seeds": seeds, "splits": SPLITS.as_dict(),
                                       "wall_seconds": time.perf_counter() - t0}], command=cmd, record=record)
    sys.stdout.write(json.dumps({"benchmark": NAME, "splits": SPLITS.describe(seeds), "reported_on": split,
                                 **summary, "wall_seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
