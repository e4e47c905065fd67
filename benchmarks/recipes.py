"""The recipes' comparison under the benchmark rule: base, local-only, federated, centralised.

Every row fine-tunes SmolLM2-135M-Instruct with the same LoRA adapter (r = 8 on q/v, same
init) and is scored on held-out *test* sets it never saw while its settings were chosen.

- ``base``: the pretrained model alone.
- ``local_only``: each client trains alone for rounds x local steps; the row is the mean
  over clients of their scores (each client's model is scored).
- ``federated``: FedAvg over the clients (all of them each round), same local steps.
- ``centralised``: the clients' training rows pooled, trained for as many steps as the
  federation ran in all: the upper reference.

**Recipes and splits.**

- ``medical`` (the packaged ``medical`` example): clients are MedQuAD sources (a seeded choice of
  ``--clients``). *Validation*: the even half of each client's MedQuAD held-out answers
  (answer loss, pooled). *Test*: the 500 PubMedQA test items (yes/no/maybe by
  log-likelihood), every MMLU-Redux medical row with error_type ok (722 items), and the odd
  half of the MedQuAD held-out answers. Scored through ``fedlm.eval`` (lm-eval's
  log-likelihoods; per-item scores for the paired tests).
- ``instruct`` (the packaged ``instruct`` example): clients are FedIT's Dolly-15k files (a seeded
  choice). *Validation*: the even half of each client's held-out rows. *Test*: Dolly's
  ``global_test.json`` (80 records held out by FedIT, no client holds them), answer loss
  per record. A record whose prompt leaves no answer token within ``seq_len`` is dropped
  as in training (57 of the 80 remain at 192 tokens).

*Tuned on validation*, per method (each trained method gets its own best): the client lr
over ``--lrs``. *Fixed in advance*: rounds, local steps, batch, seq_len, clients, LoRA.
Reported on test only; ``--report-on validation`` fails loudly.

**Seeds.** ``--seeds``: a seed draws the LoRA A init, the training rows, the held-out
split and the batches. The rule asks >= 3 seeds for a "met"; a one-seed run reports its
paired tests but its goals read "not established".

**Goal:** federated beats local-only on average (accuracy on each multiple-choice test set;
answer loss on the loss test sets), read by :func:`benchmarks._stats.verdict`. Paired tests:
per item, federated's hit (or loss) against the mean of the local models' hits (paired
bootstrap and sign-flip p), and McNemar's exact test against each local model. Pooled over
seeds, an item of a fixed test set (PubMedQA, MMLU, Dolly's global test) counts once: its
scores are averaged over the seeds first (:func:`benchmarks._stats.paired_over_seeds`).

Long on 2 shared cores: every scored model is saved as it finishes to
``benchmarks/results/recipes_items.jsonl`` (per-item scores) and re-used by a later run
with the same settings, so a cut run resumes. ``--benchmarks pubmedqa`` scores fewer sets.
``--pool`` summarises the recorded items of ``--seeds`` without training (seeds run apart).

    OMP_NUM_THREADS=1 python -m benchmarks.recipes [--recipe medical|instruct] [--quick]
        [--seeds 0] [--clients 3] [--lrs 1e-3,3e-3] [--benchmarks pubmedqa,mmlu-medical] [--pool]

``--quick``: tiny-llama, 2 clients, 8 items (a smoke check; nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._lm import example_losses, split_heldout
from benchmarks._record import RESULTS, SplitRule, command_line, kept, read_results, write_results
from benchmarks._stats import (
    accuracy_ci,
    bootstrap_ci,
    mcnemar_exact,
    paired_bootstrap,
    paired_over_seeds,
    verdict,
)
from fedlm.capabilities import build_engine
from fedlm.client.trainer import train_local
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.data.formats import FORMATS
from fedlm.eval.likelihood import macro_f1, score_tasks
from fedlm.eval.lm_tasks import write_tasks
from fedlm.seeds import derive_seed

DATA = Path(__file__).resolve().parents[2] / "shared/datasets"
EXAMPLES = Path(__file__).resolve().parents[1] / "src/fedlm/examples"
NAME = "recipes"
STATES = Path(tempfile.gettempdir()) / "fedlm-recipes-states"  # trained adapters, so a cut run resumes
RECIPES: dict[str, dict[str, Any]] = {
    "medical": {
        "config": "medical.yaml",
        "overrides": {"data.path": str(DATA / "medquad.jsonl"), "data.seq_len": 128, "federation.rounds": 3,
                      "federation.local_steps": 3, "data.heldout_fraction": 0.2},
        "mc": {"pubmedqa": (DATA / "pubmedqa", {"split": "test"}), "mmlu-medical": (DATA / "mmlu-redux-medical", {})},
        "loss_test": "medquad_test_half",
        "fixed_tests": {"pubmedqa", "mmlu-medical"},  # the same items in every seed (the MedQuAD half is drawn)
        "splits": SplitRule(validation="MedQuAD held-out, even half (answer loss)",
                            test="PubMedQA test (500), MMLU-Redux medical ok (722), MedQuAD held-out odd half",
                            seeds=(0, 1, 2), tuned=("client lr per method",),
                            fixed=("the recipe's 3 rounds x 3 local steps, batch 4", "seq_len 128", "LoRA r 8 q/v")),
    },
    "instruct": {
        "config": "instruct.yaml",
        "overrides": {"data.path": str(DATA / "dolly-fedit"), "data.seq_len": 192, "federation.rounds": 3,
                      "federation.local_steps": 3, "data.heldout_fraction": 0.2},
        "mc": {},
        "loss_test": "dolly_global_test",
        "fixed_tests": {"dolly_global_test"},
        "splits": SplitRule(validation="Dolly clients' held-out, even half (answer loss)",
                            test="Dolly global_test.json (57 of 80 records answer within seq_len 192; answer loss)",
                            seeds=(0, 1, 2), tuned=("client lr per method",),
                            fixed=("the recipe's 3 rounds x 3 local steps, batch 4", "seq_len 192", "LoRA r 8 q/v")),
    },
}


def dolly_global_test(config, tokenizer) -> list:
    rows = json.loads((DATA / "dolly-fedit/global_test.json").read_text(encoding="utf-8"))
    return [ex for _, ex in FORMATS.create("instruction").examples(rows, config.data, tokenizer)]


class Scorer:
    """Scores a model state on the recipe's test sets, once per (settings, model): cached in
    ``results/recipes_items.jsonl``."""

    def __init__(self, args, recipe: dict, config, model, test_view, key: dict, record: bool) -> None:
        self.args, self.recipe, self.config, self.model, self.test_view = args, recipe, config, model, test_view
        self.key, self.record = key, record
        self.folder = RESULTS if record else Path(tempfile.mkdtemp(prefix="fedlm-recipes-"))
        self.cache = {r["cache_key"]: r for r in read_results("recipes_items", folder=self.folder) if "cache_key" in r}
        self.loss_examples = (dolly_global_test(config, model.tokenizer) if recipe["loss_test"] == "dolly_global_test"
                              else [ex for c in test_view.clients.values() for ex in c.heldout])

    def cache_key(self, name: str, bench: str) -> str:
        text = json.dumps({**self.key, "model": name, "benchmark": bench}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def benches(self) -> list[str]:
        """Test sets in the order they are scored: every model on the first, then the next."""
        return [*(b for b in self.args.benchmarks if b in self.recipe["mc"]), self.recipe["loss_test"]]

    def score(self, name: str, state, bench: str) -> dict:
        """Per-item scores of ``state`` on ``bench`` (from the cache when this model was scored)."""
        ck = self.cache_key(name, bench)
        if ck in self.cache:
            return self.cache[ck]["items"]
        t = time.perf_counter()
        self.model.set_state(state)
        if bench == self.recipe["loss_test"]:
            losses = example_losses(self.model.model, self.loss_examples, pad_id=self.model.tokenizer.pad_token_id)
            items = {"loss": losses.per_example.tolist(), "nll": losses.nll.tolist(), "tokens": losses.tokens.tolist()}
        else:
            folder, opts = self.recipe["mc"][bench]
            with tempfile.TemporaryDirectory() as tmp:
                ts = write_tasks(bench, folder, tmp, **opts)
                sc = score_tasks(self.model.model, self.model.tokenizer, ts, batch_size=8,
                                 max_items=self.args.max_items, progress=False)
            items = {"hit": [s.hit for s in sc], "gold_prob": [s.gold_prob for s in sc],
                     "pred": [s.choices[s.pred] for s in sc], "gold": [s.choices[s.gold] for s in sc]}
        row = {"cache_key": ck, **self.key, "model": name, "benchmark": bench, "items": items,
               "seconds": time.perf_counter() - t}
        write_results("recipes_items", [row], folder=self.folder)
        self.cache[ck] = row
        print(f"  scored {name} on {bench} in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
        return items


def run_seed(args, seed: int, record: bool) -> dict[str, Any]:
    recipe = RECIPES[args.recipe]
    torch.set_num_threads(args.threads)
    ov = {**recipe["overrides"], "data.max_clients": args.clients, "federation.clients_per_round": args.clients,
          "model.seed": seed, "data.seed": seed, "federation.seed": seed, "output.report": "false",
          "eval_harness.enabled": "false"}
    if args.quick:
        ov.update({"model.name": "tiny-llama", "federation.rounds": 1, "federation.local_steps": 1})
    config = load_config(str(EXAMPLES / recipe["config"]), [f"{k}={v}" for k, v in ov.items()])
    fed = config.federation
    with contextlib.redirect_stderr(io.StringIO()):
        model, data = prepare(config)
    val, test = split_heldout(data, cap=args.val_cap)[0], split_heldout(data)[1]
    ids = data.ids()
    init = model.get_state()
    pad = model.tokenizer.pad_token_id
    key = {"recipe": args.recipe, "seed": seed, "clients": ids, "quick": args.quick, "lrs": args.lrs,
           "rounds": fed.rounds, "local_steps": fed.local_steps, "seq_len": config.data.seq_len,
           "max_items": args.max_items}
    scorer = Scorer(args, recipe, config, model, test, key, record)

    def val_loss(state) -> float:
        model.set_state(state)
        ex = [e for c in val.clients.values() for e in c.heldout]
        return example_losses(model.model, ex, pad_id=pad).mean_loss

    def train(method: str, lr: float) -> dict[str, Any]:
        """Each trained method's state(s) at ``lr``: {model name: state}."""
        if method == "local_only":
            out = {}
            for i, cid in enumerate(ids):
                model.set_state(init)
                train_local(model, data.clients[cid].train, steps=fed.rounds * fed.local_steps,
                            batch_size=fed.batch_size, lr=lr, seed=derive_seed(seed, i, 11),
                            max_grad_norm=fed.max_grad_norm)
                out[f"local_only:{cid}"] = model.get_state()
            return out
        if method == "federated":
            model.set_state(init)
            cfg = load_config(str(EXAMPLES / recipe["config"]),
                              [f"{k}={v}" for k, v in {**ov, "federation.lr": lr}.items()])
            sim = build_engine(cfg, model, data)
            state = sim.init_state()
            with contextlib.redirect_stderr(io.StringIO()):
                while state.round < fed.rounds:
                    state, _ = sim.run_round(state)
            return {"federated": state.global_state}
        model.set_state(init)
        pooled = [ex for cid in ids for ex in data.clients[cid].train]
        train_local(model, pooled, steps=fed.rounds * len(ids) * fed.local_steps, batch_size=fed.batch_size, lr=lr,
                    seed=derive_seed(seed, 99), max_grad_norm=fed.max_grad_norm)
        return {"centralised": model.get_state()}

    t0 = time.perf_counter()
    chosen: dict[str, Any] = {}
    states: dict[str, Any] = {"base": init}
    for method in args.methods:
        if method == "base":
            continue
        trials = {}
        for lr in args.lrs:
            saved = STATES / f"{scorer.cache_key(method, f'lr={lr:g}')}.pt"
            got = kept(saved, lambda method=method, lr=lr: train(method, lr), keep=record)
            trials[lr] = (float(np.mean([val_loss(s) for s in got.values()])), got)
            print(f"seed {seed}: {method} lr {lr:g} validation loss {trials[lr][0]:.4f} "
                  f"after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        best = min(trials, key=lambda lr: trials[lr][0])
        chosen[method] = {"lr": best, "val_loss": {f"{lr:g}": v for lr, (v, _) in trials.items()}}
        states.update(trials[best][1])
    scores: dict[str, dict] = {name: {} for name in states}
    order = sorted(states, key=lambda n: ["federated", "local_only", "base", "centralised"].index(n.split(":")[0]))
    for bench in scorer.benches():
        for name in order:
            scores[name][bench] = scorer.score(name, states[name], bench)
    return {"seed": seed, "clients": ids, "chosen": chosen, "scores": scores, "seconds": time.perf_counter() - t0}


def recorded_runs(args, seeds: list[int]) -> list[dict[str, Any]]:
    """``--pool``: the seeds' scored items with these settings, as :func:`run_seed` returns them.

    Every scored model is in ``recipes_items.jsonl`` (saved as it finishes); each seed's chosen
    lrs come from the latest ``recipes.jsonl`` row that ran it. Refuses a seed scored under two
    client draws, or one whose federated, local or other models miss a test set."""
    recipe = RECIPES[args.recipe]
    benches = [b for b in args.benchmarks if b in recipe["mc"]] + [recipe["loss_test"]]
    want = {"recipe": args.recipe, "quick": False, "lrs": args.lrs, "max_items": args.max_items}
    items = [r for r in read_results("recipes_items") if all(r.get(k) == v for k, v in want.items())]
    chosen = {int(k): v for r in read_results(NAME) if r.get("recipe") == args.recipe
              for k, v in (r.get("chosen") or {}).items()}
    runs = []
    for seed in seeds:
        mine = [r for r in items if r["seed"] == seed]
        draws = {tuple(r["clients"]) for r in mine}
        if len(draws) > 1:
            raise SystemExit(f"--pool: seed {seed} was scored under {len(draws)} client draws; keep one")
        scores: dict[str, dict] = {}
        for r in mine:  # a model scored twice with these settings: the later row
            scores.setdefault(r["model"], {})[r["benchmark"]] = r["items"]
        unscored = sorted(f"{m} on {b}" for m in scores for b in benches if b not in scores[m])
        if "federated" not in scores or not any(m.startswith("local_only:") for m in scores) or unscored:
            raise SystemExit(f"--pool: seed {seed} is not fully scored with these settings "
                             f"({', '.join(unscored) or 'no federated or local model'}); run it first (--seeds {seed})")
        runs.append({"seed": seed, "clients": list(draws.pop()), "chosen": chosen.get(seed), "scores": scores})
    return runs


def summarise(recipe: dict, args, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and test set: each row's score with its 95% bootstrap interval; federated
    against the mean of the local models, paired per item (pooled over seeds, an item of a
    fixed test set counted once), and the goal."""
    benches = [b for b in args.benchmarks if b in recipe["mc"]] + [recipe["loss_test"]]
    rows: list[dict[str, Any]] = []
    goals: dict[str, str] = {}
    tests: dict[str, Any] = {}
    for bench in benches:
        is_mc = bench in recipe["mc"]
        metric = "hit" if is_mc else "loss"
        fed_by_seed, local_by_seed, diffs, per_seed = [], [], [], []
        for run in runs:
            sc = run["scores"]
            if not all(bench in v for v in sc.values()):
                continue
            local = [n for n in sc if n.startswith("local_only:")]

            def items(name: str) -> list[float]:
                return [float(x) for x in sc[name][bench][metric]]  # noqa: B023 (used within this iteration)

            for name in ("base", "federated", "centralised"):
                if name in sc:
                    ci = accuracy_ci(items(name)) if is_mc else bootstrap_ci(items(name))
                    rows.append({"seed": run["seed"], "model": name, "benchmark": bench, "metric": metric,
                                 **_ci(ci), **_extra(sc[name][bench], is_mc)})
            if not local:
                continue
            local_mean = np.mean([items(n) for n in local], axis=0)
            rows.append({"seed": run["seed"], "model": f"local_only (mean of {len(local)})", "benchmark": bench,
                         "metric": metric, **_ci(bootstrap_ci(local_mean)),
                         **({"each": [float(np.mean(items(n))) for n in local]})})
            if "federated" in sc:
                one = paired_bootstrap(items("federated"), local_mean)
                diffs.append(one.diff.estimate)
                fed_by_seed.append(items("federated"))
                local_by_seed.append(local_mean.tolist())
                per_seed.append({"seed": run["seed"], "federated_minus_local": one.as_dict(),
                                 "mcnemar_vs_each_local": ({n: mcnemar_exact(items("federated"), items(n))
                                                            for n in local} if is_mc else None)})
        if diffs:
            pooled = paired_over_seeds(fed_by_seed, local_by_seed, shared_items=bench in recipe["fixed_tests"])
            tests[bench] = {"per_seed": per_seed, "pooled": pooled.as_dict()}
            goals[bench] = str(verdict(diffs, paired=pooled, higher_is_better=is_mc))
    return {"rows": rows, "paired_tests": tests, "goals": goals}


def _ci(ci) -> dict[str, float]:
    return {"value": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi}


def _extra(items: dict, is_mc: bool) -> dict[str, float]:
    if not is_mc:
        return {}
    out = {"gold_prob": float(np.mean(items["gold_prob"]))}
    if set(items["gold"]) <= {"yes", "no", "maybe"}:  # PubMedQA's labels: its macro F1 too
        out["macro_f1"] = macro_f1(items["gold"], items["pred"], labels=["yes", "no", "maybe"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="medical")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=3, help="clients (a seeded choice; fixed in advance)")
    ap.add_argument("--lrs", default="1e-3,3e-3", help="client lr grid, chosen per method on validation")
    ap.add_argument("--methods", default="base,federated,local_only,centralised")
    ap.add_argument("--benchmarks", default="pubmedqa,mmlu-medical", help="multiple-choice test sets (medical)")
    ap.add_argument("--max-items", type=int, default=None, help="evenly spaced subset (None: the full test sets)")
    ap.add_argument("--val-cap", type=int, default=32, help="validation examples per client at most")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-on", default="test")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--pool", action="store_true", help="summarise the recorded items of --seeds instead of training")
    args = ap.parse_args()
    recipe = RECIPES[args.recipe]
    split = recipe["splits"].check_report(args.report_on)
    args.lrs = [float(x) for x in args.lrs.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    args.benchmarks = [b for b in args.benchmarks.split(",") if b]
    if args.quick:
        args.clients, args.max_items, args.lrs = 2, 8, args.lrs[:1]
    record = not (args.quick or args.no_record)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = recorded_runs(args, seeds) if args.pool else [run_seed(args, s, record) for s in seeds]
    summary = summarise(recipe, args, runs)
    cmd = command_line("recipes")
    write_results(NAME, [{"recipe": args.recipe, "splits": recipe["splits"].as_dict(), "reported_on": split,
                          "seeds": seeds, "pooled": args.pool, "chosen": {r["seed"]: r["chosen"] for r in runs},
                          "clients": runs[0]["clients"], **summary,
                          "wall_seconds": time.perf_counter() - t0}], command=cmd, record=record)
    sys.stdout.write(json.dumps({"benchmark": NAME, "recipe": args.recipe, "splits": recipe["splits"].describe(seeds),
                                 "reported_on": split, "chosen": {r["seed"]: r["chosen"] for r in runs},
                                 "rows": summary["rows"], "goals": summary["goals"],
                                 "wall_seconds": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
