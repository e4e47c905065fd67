"""Contribution estimators side by side: exact Shapley vs GTG-Shapley vs leave-one-out.

One tiny-llama run keeps its round updates (``explain.keep_updates``); then, on the same
stored rounds and the same server validation split, each estimator values every client.
Reported: the Pearson correlation of GTG's and leave-one-out's values with exact Shapley
(cumulative over rounds, and the mean of the per-round correlations), the distinct
coalition evaluations, and the wall-time ratios exact/GTG and exact/LOO (measured in the
same process, interleaved round by round). The cohort holds honest clients, an exact
copy of the first one (``dup``) and a client of random bytes (``garbage``).

**Splits and seeds.** Nothing is tuned (GTG's epsilon 0, lr 0.02, 4 local steps, uniform
weights are fixed in advance), so there is no validation split; every estimator values
coalitions on the same utility set, the pooled held-out rows of the honest clients (what
``fedlm.explain`` calls the server's validation split), and the figures are reported on
it (``--report-on`` accepts only test). ``--seeds`` (default one seed, 0): a seed draws the
clients' text, the init, the batches and GTG's permutations; each seed is its own row.

    python -m benchmarks.contribution [--quick] [--clients 8] [--rounds 3] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._record import SplitRule, add_rule_args, finish, read_rule_args
from fedlm.capabilities.contribution import Contribution, contribution_record
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.explain.contribution import ContributionResult, cumulative
from fedlm.explain.store import load_round

SPLITS = SplitRule.untuned(
    test="pooled held-out rows of the honest clients (explain.validation_clients, the utility every estimator shares)",
    seeds=(0,),
    fixed=("gtg_epsilon 0", "lr 0.02, 4 local steps, batch 2, uniform weights", "seq_len 32", "10 rows per client"),
)
POOL = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "birds", "sing", "to", "be", "or", "not", "that", "is", "question", "whether", "tis", "nobler", "a", "stitch", "in", "time", "saves", "nine", "and", "many", "hands", "make", "light", "work", "all", "glitters", "gold", "nor", "who", "wander", "are", "lost"]


def write_clients(path: Path, honest: int, *, rows: int = 10, seed: int = 0) -> list[str]:
    """``honest`` clients with overlapping 12-word vocabularies, ``dup`` (= c0) and ``garbage``."""
    rng = random.Random(seed)
    out, names = [], [f"c{i}" for i in range(honest)]
    for name in names:
        vocab = rng.sample(POOL, 12)
        out += [{"client": name, "text": " ".join(rng.choice(vocab) for _ in range(30))} for _ in range(rows)]
    out += [dict(r, client="dup") for r in out if r["client"] == "c0"]
    out += [{"client": "garbage", "text": "".join(chr(rng.randint(33, 126)) for _ in range(160))} for _ in range(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return names


def pearson(a: dict[str, float], b: dict[str, float]) -> float:
    ids = sorted(a)
    return float(np.corrcoef([a[i] for i in ids], [b[i] for i in ids])[0, 1])


def run_seed(n: int, rounds: int, seed: int) -> dict:
    """One run keeping its updates, then every estimator on its stored rounds."""
    tmp = Path(tempfile.mkdtemp(prefix="fedlm-contribution-"))
    honest = write_clients(tmp / "data.jsonl", n - 2, seed=seed)
    overrides = {
        "model.name": "tiny-llama", "data.source": "jsonl", "data.path": str(tmp / "data.jsonl"),
        "data.client_field": "client", "data.min_client_chars": 0, "data.max_clients": "null",
        "data.seq_len": 32, "data.heldout_fraction": 0.2, "federation.rounds": rounds,
        "federation.clients_per_round": n, "federation.local_steps": 4, "federation.batch_size": 2,
        "federation.lr": 0.02, "federation.weighting": "uniform", "eval.max_clients": 3, "eval.batch_size": 4,
        "explain.keep_updates": "true", "explain.validation_clients": json.dumps(honest),
        "explain.gtg_epsilon": 0.0, "output.report": "false",
        "model.seed": seed, "data.seed": seed, "federation.seed": seed, "explain.seed": seed,
    }
    config = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    run_dir = run_experiment(config, out_dir=tmp / "run").run_dir
    model, data = prepare(config)
    run = Contribution(config, model, data)

    results: dict[str, list[ContributionResult]] = {"exact": [], "gtg": [], "loo": []}
    seconds = dict.fromkeys(results, 0.0)
    per_round_r = {"gtg": [], "loo": []}
    for path in sorted((run_dir / "explain").glob("round_*.safetensors")):
        _, global_state, tensors, weights = load_round(path)
        for method in results:  # interleaved: the same round's inputs, one estimator after another
            t0 = time.perf_counter()
            rec = contribution_record(run, global_state, tensors, weights, method=method)
            seconds[method] += time.perf_counter() - t0
            results[method].append(ContributionResult(values=rec["values"], evaluations=rec["evaluations"], method=method))
        for m in per_round_r:
            per_round_r[m].append(pearson(results[m][-1].values, results["exact"][-1].values))
    total = {m: cumulative(r) for m, r in results.items()}
    evals = {m: sum(x.evaluations for x in r) for m, r in results.items()}
    return {
        "model": "tiny-llama",
        "seed": seed,
        "clients": n,
        "rounds": rounds,
        "pearson_gtg_exact": pearson(total["gtg"], total["exact"]),
        "pearson_loo_exact": pearson(total["loo"], total["exact"]),
        "pearson_gtg_exact_per_round": statistics.mean(per_round_r["gtg"]),
        "pearson_loo_exact_per_round": statistics.mean(per_round_r["loo"]),
        "evaluations_exact": evals["exact"],
        "evaluations_gtg": evals["gtg"],
        "evaluations_loo": evals["loo"],
        "time_ratio_exact_gtg": seconds["exact"] / seconds["gtg"],
        "time_ratio_exact_loo": seconds["exact"] / seconds["loo"],
        "garbage_last": all(min(v, key=v.get) == "garbage" for v in total.values()),
        "dup_minus_c0_exact": total["exact"]["dup"] - total["exact"]["c0"],
        "dup_minus_c0_gtg": total["gtg"]["dup"] - total["gtg"]["c0"],
        "cumulative": {m: {k: round(v, 5) for k, v in t.items()} for m, t in total.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="6 clients, 2 rounds; BENCHMARKS.md untouched")
    ap.add_argument("--clients", type=int, default=None, help="cohort size (<= 8 for exact Shapley)")
    ap.add_argument("--rounds", type=int, default=None)
    add_rule_args(ap, SPLITS, seeds_help="each seed is one run and one row")
    args = ap.parse_args()
    split, seeds, rule = read_rule_args(args, SPLITS)
    n = args.clients or (6 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 3)
    runs = [run_seed(n, rounds, s) for s in seeds]
    if args.quick:  # a smoke run: print, leave BENCHMARKS.md alone
        print(json.dumps({"benchmark": "contribution", "splits": rule.describe(), "reported_on": split,
                          "runs": runs}))
        return
    for result in runs:
        finish("contribution", {**result, "splits": rule.as_dict(), "reported_on": split},
               columns=["model", "seed", "clients", "rounds", "pearson_gtg_exact", "pearson_loo_exact",
                        "pearson_gtg_exact_per_round", "pearson_loo_exact_per_round", "evaluations_exact",
                        "evaluations_gtg", "evaluations_loo", "time_ratio_exact_gtg", "time_ratio_exact_loo",
                        "garbage_last"])


if __name__ == "__main__":
    main()
