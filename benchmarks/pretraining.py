"""Federated pre-training under the benchmark rule: synchronous averaging (H = 1) vs DiLoCo at H.

Every setting trains the same small Llama from the same random init on the same clients for
the same number of inner steps per client, T, so all see the same tokens; only how often
they communicate differs: rounds = T / H.

- H = 1, the synchronous baseline: the server averages the clients' weights after every
  inner step (``server_opt.name=fedavg``, server lr 1).
- H > 1, DiLoCo (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of
  Language Models"): H inner AdamW steps per round, then an outer Nesterov step on the mean
  pseudo-gradient (``server_opt.name=nesterov``).

Each client keeps its AdamW state across rounds; the inner lr follows one cosine schedule
over the T inner steps (2e-3 down to 2e-4, ``federation.lr_schedule_unit=step``), the same
at step t for every H. Bytes are the payloads actually sent (fp32 both ways).

**Splits.** Each client's held-out sequences (10% of its text, a seeded draw) are cut in two
fixed halves (:func:`benchmarks._lm.split_heldout`): *validation* (even positions) and
*test* (odd positions), both scored at 8 checkpoints (every T/8 inner steps). Chosen on
validation: the outer (lr, momentum) of H = 50, over ``--outer-grid`` on the tuning seed
(the first of ``--seeds``); and, for every run, the checkpoint it is reported at (its
lowest validation loss: a run that starts to overfit is read at its best point, so a
baseline that overfits cannot make the other look better). Fixed in advance: T, the
inner lr and schedule, the model, 4 IID clients. Reported on test only; ``--report-on
validation`` fails loudly.

**Seeds.** ``--seeds 0,1,2`` (model init, data split and batches: ``model.seed``,
``data.seed``, ``federation.seed``).

**Goal:** at H = 50, test loss within 3% of H = 1's with >= 50x less communication, on every
seed, and a paired test over the pooled test sequences (H = 50's loss against 1.03 x H = 1's)
significant at 5%. Raw rows: ``benchmarks/results/pretraining.jsonl``.

    OMP_NUM_THREADS=1 python -m benchmarks.pretraining [--quick] [--steps 400] [--seeds 0,1,2]
        [--outer-grid 0.7:0.9,1.0:0.5] [--size base|small] [--jobs 3]

``--quick``: a smaller model on generated text for a few steps (seconds; nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks._lm import example_losses, split_heldout
from benchmarks._record import SplitRule, add_report_on, command_line, write_results
from benchmarks._stats import fmt_mean_std, paired_bootstrap, verdict

NAME = "pretraining"
TINYSHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/datasets/shakespeare/tinyshakespeare.txt"
ARCHITECTURES = {
    "base": "{hidden_size: 128, num_hidden_layers: 4, intermediate_size: 384, num_attention_heads: 4,"
            " num_key_value_heads: 2}",
    "small": "{hidden_size: 64, num_hidden_layers: 2, intermediate_size: 192, num_attention_heads: 4,"
             " num_key_value_heads: 2}",
}
QUICK_ARCHITECTURE = ("{hidden_size: 32, num_hidden_layers: 1, intermediate_size: 64, num_attention_heads: 2,"
                      " num_key_value_heads: 1}")
GOAL_H, GOAL_GAP, GOAL_COMM = 50, 0.03, 50.0
CHECKPOINTS = 8
SPLITS = SplitRule(
    validation="tinyshakespeare held-out, even half (per client)",
    test="tinyshakespeare held-out, odd half (per client)",
    seeds=(0, 1, 2),
    tuned=("outer lr and momentum of H = 50 (tuning seed)", "each run's checkpoint (lowest validation loss)"),
    fixed=("T inner steps", "inner AdamW lr 2e-3, cosine to 2e-4 by step", "model size", "4 IID clients"),
)


def quick_text(path: Path) -> None:
    words = ["to", "be", "or", "not", "the", "question", "whether", "tis", "nobler", "in", "mind"]
    paragraphs = [" ".join(words[(p * 3 + i) % len(words)] for i in range(20)).capitalize() + "."
                  for p in range(200)]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")


def overrides(h: int, outer: tuple[float, float], *, seed: int, args: argparse.Namespace, text: Path) -> list[str]:
    ov = [
        "model.name=tiny-llama", "model.init=random", f"model.device={args.device}",
        f"model.architecture={QUICK_ARCHITECTURE if args.quick else ARCHITECTURES[args.size]}",
        "lora.enabled=false", "data.source=text", f"data.path={text}", "data.partition=iid",
        f"data.num_clients={args.clients}", "data.min_client_chars=0", "data.max_clients=null",
        f"data.seq_len={32 if args.quick else 128}", f"federation.rounds={args.steps // h}",
        f"federation.clients_per_round={args.clients}", f"federation.local_steps={h}",
        f"federation.batch_size={4 if args.quick else 8}", f"federation.lr={args.inner_lr}",
        "federation.lr_schedule=cosine", "federation.lr_schedule_unit=step", "federation.min_lr_ratio=0.1",
        "federation.weight_decay=0.01", "federation.keep_optimizer_state=true",
        f"model.seed={seed}", f"data.seed={seed}", f"federation.seed={seed}", "output.report=false",
    ]
    if h == 1:
        return [*ov, "server_opt.name=fedavg"]
    return [*ov, "server_opt.name=nesterov", f"server_opt.lr={outer[0]}", f"server_opt.momentum={outer[1]}"]


def run_setting(h: int, outer: tuple[float, float], seed: int, args: argparse.Namespace, text: str) -> dict[str, Any]:
    """Train one setting; validation and test losses at every checkpoint, per-sequence test
    losses at the checkpoint validation picks."""
    from fedlm.capabilities import build_engine
    from fedlm.commands.experiment import prepare
    from fedlm.config import load_config

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = load_config(None, overrides(h, outer, seed=seed, args=args, text=Path(text)))
    with contextlib.redirect_stderr(io.StringIO()):
        model, data = prepare(config)
    val, test = split_heldout(data)
    pad = model.tokenizer.pad_token_id
    every = max(1, (args.steps // h) // CHECKPOINTS)  # rounds between checkpoints

    def losses(view, state):
        model.set_state(state)
        return example_losses(model.model, [e for c in view.clients.values() for e in c.heldout], pad_id=pad,
                              batch_size=32)

    sim = build_engine(config, model, data)
    state = sim.init_state()
    curve, best = [], None
    with contextlib.redirect_stderr(io.StringIO()):
        while state.round < config.federation.rounds:
            state, _ = sim.run_round(state)
            if state.round % every == 0 or state.round == config.federation.rounds:
                v, t = losses(val, state.global_state), losses(test, state.global_state)
                curve.append({"inner_step": state.round * h, "val": v.mean_loss, "test": t.mean_loss})
                if best is None or v.mean_loss < best[0]:
                    best = (v.mean_loss, state.round * h, t)
    totals = state.totals
    res = {
        "H": h, "seed": seed, "outer": None if h == 1 else {"lr": outer[0], "momentum": outer[1]},
        "rounds": state.round, "inner_steps": args.steps, "curve": curve,
        "chosen_step": best[1], "val_loss": best[0], "test_loss": best[2].mean_loss,
        "test_items": best[2].per_example.tolist(), "final_test_loss": curve[-1]["test"],
        "bytes_total": totals.get("bytes_up", 0) + totals.get("bytes_down", 0),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps({"setting_done": {k: v for k, v in res.items() if k not in ("curve", "test_items")}}),
          file=sys.stderr, flush=True)
    return res


def run_all(jobs: list[tuple], args: argparse.Namespace, text: Path) -> list[dict[str, Any]]:
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_setting, h, o, s, args, str(text)) for h, o, s in jobs]
            return [f.result() for f in futures]
    return [run_setting(h, o, s, args, str(text)) for h, o, s in jobs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=400, help="inner steps per client T (fixed in advance)")
    ap.add_argument("--h", type=int, default=GOAL_H, help="DiLoCo's H")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size", choices=sorted(ARCHITECTURES), default="base")
    ap.add_argument("--inner-lr", type=float, default=2e-3)
    ap.add_argument("--outer-grid", default="0.7:0.9,1.0:0.5", help="lr:momentum pairs tried on validation")
    ap.add_argument("--seeds", default="0,1,2", help="the first is the tuning seed")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--text", type=Path, default=TINYSHAKESPEARE)
    add_report_on(ap, SPLITS)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    seeds = [int(x) for x in args.seeds.split(",")]
    grid = [tuple(float(v) for v in pair.split(":")) for pair in args.outer_grid.split(",")]
    if args.quick:
        args.steps, args.h, seeds = 40, 10, seeds[:3]
    if args.steps % args.h:
        ap.error(f"--h {args.h} must divide --steps {args.steps} (equal tokens: rounds = steps / H)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedlm-pretrain-") as tmp:
        text = args.text
        if args.quick:
            text = Path(tmp) / "quick.txt"
            quick_text(text)
        elif not text.is_file():
            ap.error(f"--text {text} is not a file; point it at tinyshakespeare.txt (see shared/datasets)")
        # 1. Tuning seed: every outer step of the grid, and the synchronous run, on validation.
        tune = run_all([(args.h, o, seeds[0]) for o in grid] + [(1, (1.0, 0.0), seeds[0])], args, text)
        chosen = min(tune[:-1], key=lambda r: r["val_loss"])
        outer = (chosen["outer"]["lr"], chosen["outer"]["momentum"])
        # 2. The other seeds at the chosen outer step (the tuning seed's runs are reused).
        rest = run_all([(h, outer, s) for s in seeds[1:] for h in (1, args.h)], args, text)
    runs = {(1, seeds[0]): tune[-1], (args.h, seeds[0]): chosen}
    for r in rest:
        runs[(r["H"], r["seed"])] = r
    gaps, comm, xa, xb = [], [], [], []
    for s in seeds:
        sync, dil = runs[(1, s)], runs[(args.h, s)]
        gaps.append(dil["test_loss"] / sync["test_loss"] - 1.0)
        comm.append(sync["bytes_total"] / dil["bytes_total"])
        xa += dil["test_items"]
        xb += [(1 + GOAL_GAP) * x for x in sync["test_items"]]
    paired = paired_bootstrap(xa, xb)
    goal = verdict([g - GOAL_GAP for g in gaps], paired=paired, higher_is_better=False)
    if min(comm) < GOAL_COMM:
        goal = type(goal)("missed", f"communication reduction {min(comm):.1f}x < {GOAL_COMM:g}x; {goal.reason}")
    summary = {
        "steps": args.steps, "H": args.h, "size": args.size, "seeds": seeds,
        "outer_grid_val_loss": {f"lr {r['outer']['lr']:g} m {r['outer']['momentum']:g}": r["val_loss"]
                                for r in tune[:-1]},
        "chosen_outer": {"lr": outer[0], "momentum": outer[1]},
        "sync_test_loss": fmt_mean_std([runs[(1, s)]["test_loss"] for s in seeds]),
        f"h{args.h}_test_loss": fmt_mean_std([runs[(args.h, s)]["test_loss"] for s in seeds]),
        "gap": fmt_mean_std(gaps), "gaps": gaps, "comm_reduction": comm,
        "chosen_steps": {f"H={h},seed={s}": r["chosen_step"] for (h, s), r in runs.items()},
        "goal": f"H = {args.h} within {GOAL_GAP:.0%} of H = 1 with >= {GOAL_COMM:g}x less: {goal}",
        "goal_status": goal.status,
    }
    cmd = command_line("pretraining")
    record = not (args.quick or args.no_record)
    write_results(NAME, [{k: v for k, v in r.items() if k != "test_items"} for r in [*tune, *rest]],
                  command=cmd, record=record)
    write_results(NAME + "_summary", [{"summary": summary, "splits": SPLITS.as_dict(), "reported_on": split,
                                       "wall_seconds": time.perf_counter() - t0}], command=cmd, record=record)
    sys.stdout.write(json.dumps({"benchmark": NAME, "splits": SPLITS.describe(), "reported_on": split, **summary,
                                 "wall_seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
