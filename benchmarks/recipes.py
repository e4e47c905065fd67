"""The OpenFedLLM-style comparison on the medical recipe: base, local-only, federated, centralised.

Every row fine-tunes SmolLM2-135M-Instruct with the same LoRA adapter (r = 8 on q/v, same
init) on MedQuAD answers and is scored on the medical recipe's benchmarks
(``examples/medical.yaml``): PubMedQA test items (yes/no/maybe by log-likelihood: accuracy
and macro F1) and MMLU-Redux medical (rows with error_type ok, letters by log-likelihood),
both on the same evenly spaced subsets, plain-text prompts, no judge model. Besides
accuracy, ``gold_prob`` is the mean share of the options' softmax (over summed
log-likelihoods) on the right option, which moves before an argmax flips; and
``medquad_heldout_ppl`` is the perplexity of every client's held-out MedQuAD answers pooled.

- ``base``: the pretrained model alone.
- ``local_only``: each client (MedQuAD source) trains alone for rounds x local steps; the
  row is the mean over clients of their scores.
- ``federated``: FedAvg over the clients (all of them each round), same local steps.
- ``centralised``: the clients' training examples pooled, trained for as many steps as the
  federation ran in all (rounds x clients x local steps): the upper reference.

Goal: federated beats local-only on average.

    OMP_NUM_THREADS=1 python -m benchmarks.recipes [--quick] [--clients 4] [--max-items 60]

``--quick`` uses tiny-llama on 2 sources and 4 items (a smoke check; nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks._record import append_table
from fedlm.capabilities import build_engine
from fedlm.client.trainer import train_local
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.engine.simulation import Simulation
from fedlm.eval.benchmarks import run_benchmarks
from fedlm.seeds import derive_seed

RECIPE = "examples/medical.yaml"
NAME = "Recipes"
METRICS = (
    ("pubmedqa", "accuracy"), ("pubmedqa", "macro_f1"), ("pubmedqa", "gold_prob"),
    ("mmlu-medical", "accuracy"), ("mmlu-medical", "gold_prob"),
)
HELDOUT = "medquad_heldout_ppl"  # every client's held-out answers pooled: in-domain perplexity (lower is better)


def scores(config, model, evaluator: Simulation, ids: list[str]) -> dict[str, float]:
    """The benchmarks and the pooled MedQuAD held-out perplexity of the state the model holds."""
    heldout = evaluator.evaluate(model.get_state(), ids)["perplexity"]  # leaves the model in that state
    out = run_benchmarks(config.eval_harness, model.model, model.tokenizer)
    return {**{f"{b}_{m}": out[b][m] for b, m in METRICS}, HELDOUT: heldout}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=4, help="MedQuAD sources (a seeded choice)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--max-items", type=int, default=60, help="items per benchmark (evenly spaced)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    extra = {}
    if args.quick:
        args.clients, args.rounds, args.local_steps, args.max_items, args.seq_len = 2, 1, 1, 4, 256
        extra = {"model.name": "tiny-llama"}
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    overrides = {**extra, "data.max_clients": args.clients, "data.seq_len": args.seq_len,
                 "federation.rounds": args.rounds, "federation.clients_per_round": args.clients,
                 "federation.local_steps": args.local_steps, "federation.lr": args.lr,
                 "eval.max_clients": args.clients, "eval_harness.max_items": args.max_items, "output.report": "false"}
    config = load_config(RECIPE, [f"{k}={v}" for k, v in overrides.items()])
    fed = config.federation
    with contextlib.redirect_stderr(io.StringIO()):
        model, data = prepare(config)
    init = model.get_state()
    ids = data.ids()
    evaluator = build_engine(config, model, data)
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    rows.append({"model": "base", **scores(config, model, evaluator, ids)})
    seconds["base"] = time.perf_counter() - t
    print(f"base: {rows[-1]} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    t = time.perf_counter()
    local = []
    for i, cid in enumerate(ids):
        model.set_state(init)
        train_local(model, data.clients[cid].train, steps=fed.rounds * fed.local_steps, batch_size=fed.batch_size,
                    lr=fed.lr, seed=derive_seed(0, i, 11), max_grad_norm=fed.max_grad_norm)
        local.append(scores(config, model, evaluator, ids))
    rows.append({"model": f"local_only (mean of {len(ids)})",
                 **{k: float(np.mean([s[k] for s in local])) for k in local[0]}})
    seconds["local_only"] = time.perf_counter() - t
    print(f"local_only: {rows[-1]} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    t = time.perf_counter()
    model.set_state(init)
    state = evaluator.init_state()  # the evaluator is the federation's simulation too
    with contextlib.redirect_stderr(io.StringIO()):
        while state.round < fed.rounds:
            state, _ = evaluator.run_round(state)
    model.set_state(state.global_state)
    rows.append({"model": "federated (FedAvg)", **scores(config, model, evaluator, ids)})
    seconds["federated"] = time.perf_counter() - t
    print(f"federated: {rows[-1]} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    t = time.perf_counter()
    model.set_state(init)
    pooled = [ex for cid in ids for ex in data.clients[cid].train]
    train_local(model, pooled, steps=fed.rounds * len(ids) * fed.local_steps, batch_size=fed.batch_size, lr=fed.lr,
                seed=derive_seed(0, 99), max_grad_norm=fed.max_grad_norm)
    rows.append({"model": "centralised (pooled)", **scores(config, model, evaluator, ids)})
    seconds["centralised"] = time.perf_counter() - t
    print(f"centralised: {rows[-1]} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    cols = ["model", *(f"{b}_{m}" for b, m in METRICS), HELDOUT]
    local_row, fed_row = rows[1], rows[2]
    goals = {"federated_beats_local_mean": {k: (fed_row[k] < local_row[k]) if k == HELDOUT else (fed_row[k] > local_row[k])
                                            for k in cols[1:]}}
    note = (f"python -m benchmarks.recipes --clients {args.clients} --rounds {args.rounds} --local-steps "
            f"{args.local_steps} --max-items {args.max_items} ({config.model.name}, MedQuAD sources {', '.join(ids)}, "
            f"seq_len {args.seq_len}, lr {args.lr})")
    append_table(NAME, rows, columns=cols, record=not args.quick, note=note)
    sys.stdout.write(json.dumps({"benchmark": "recipes", "rows": rows, "goals": goals, "seconds": seconds,
                                 "wall_seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
