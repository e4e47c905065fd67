"""Personalisation and fairness on MedQuAD's 9 NIH sources: who does each method serve?

Every method fine-tunes the same SmolLM2-135M-Instruct LoRA adapter (r = 8 on q/v) from the
same init on the same clients (one per MedQuAD source, instruction format, loss on the
answer), for the same local steps per client per round; only the method differs. Each
client is then scored on its own held-out questions (held-out perplexity of the answers).

- ``local_only``: each client trains alone for rounds x local steps (one AdamW run).
- ``fedavg_global``: the FedAvg global adapter after the rounds.
- ``finetune``: that global adapter fine-tuned on each client's data for local steps.
- ``ditto``: Ditto's personal adapters (Li et al. 2021), trained each round toward the
  broadcast with ``lambda`` (its global side is FedAvg, so this run also gives ``fedavg_global``).
- ``modules``: FedPer-style personal modules: the ``v_proj`` adapters stay on each client.
- ``fedrep``: the same split with FedRep's schedule (Collins et al. 2021): each round the
  ``v_proj`` adapters train alone for local steps, then the shared ones with them frozen.
- ``mix``: FedDPA-style: a local adapter trained freely next to the global one, mixed with
  a weight per module learnt on the client's data (``personal.method=mix``).
- ``qffl``: the q-FFL global adapter (q-FedAvg, Li et al. 2020).
- ``finetune_select``, ``ditto_select``, ``mix_select``: the same methods with
  ``personal.val_fraction``: each client holds a share of its training examples out of its
  personal training and keeps, on them, the better of its personal model and the global one
  (finetune: the best step count, 0 = the global model, then refit on all its examples).
- ``qffl_finetune_select``: finetune_select on top of the q-FFL global adapter: a fairer
  federation, then each client's own choice.

Reported per method over the 9 clients: mean held-out perplexity, std, the worst 10%
(ceil(0.9) = the worst client), Jain's index, and each client's value.
Goals: federated beats local-only on average (checked twice: the FedAvg global alone, and
the best federated method, personal steps included); the best personalised method improves
the worst-10% over the FedAvg global. ``--seed`` repeats a run on new LoRA A, rows and splits.

    OMP_NUM_THREADS=1 python -m benchmarks.personalization [--quick] [--rounds 3] [--local-steps 3]
        [--val-fraction 0.25] [--methods local_only,finetune,finetune_select,...] [--device cpu]
        [--medquad ../shared/datasets/medquad.jsonl]

``--quick`` uses tiny-llama on 3 sources for one round (a smoke check; nothing recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from typing import Any

import torch

from benchmarks._record import append_table
from fedlm.capabilities import build_engine
from fedlm.capabilities.personal import Personalization
from fedlm.engine.capability import EngineContext
from fedlm.client.trainer import train_local
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.engine.simulation import Simulation
from fedlm.eval.fairness import fairness_stats
from fedlm.seeds import derive_seed

MEDQUAD = "../shared/datasets/medquad.jsonl"
NAME = "Personalisation"


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model.name": args.model, "model.device": args.device,
        "model.seed": args.seed, "data.seed": args.seed, "federation.seed": args.seed,
        "data.source": "jsonl", "data.path": args.medquad, "data.client_field": "source", "data.format": "instruction",
        "data.prompt_field": "question", "data.context_field": "null", "data.response_field": "answer",
        "data.max_clients": args.clients, "data.min_client_chars": 0, "data.seq_len": args.seq_len,
        "data.max_examples_per_client": args.examples,
        "federation.rounds": args.rounds, "federation.clients_per_round": args.clients,
        "federation.local_steps": args.local_steps, "federation.batch_size": args.batch_size,
        "federation.lr": args.lr,
        "eval.max_clients": args.clients, "eval.max_batches_per_client": args.eval_batches, "eval.batch_size": 8,
        "output.report": "false",
        **({"personal.lr": args.personal_lr} if args.personal_lr else {}),
        **({"personal.steps": args.personal_steps} if args.personal_steps else {}),
    }


def run_rounds(config, model, data, init) -> tuple[Simulation, Any]:
    model.set_state(init)
    sim = build_engine(config, model, data)
    state = sim.init_state()
    with contextlib.redirect_stderr(io.StringIO()):
        while state.round < config.federation.rounds:
            state, _ = sim.run_round(state)
    return sim, state


def per_client(ev: dict[str, Any], side: str | None = None) -> dict[str, float]:
    return {c: (m[side] if side else m)["perplexity"] for c, m in ev["clients"].items()}


def selections(report: dict[str, Any]) -> dict[str, dict]:
    """What each client chose on its validation split (``personal.val_fraction``; empty without it)."""
    return {c: m["selection"] for c, m in report["clients"].items() if m.get("selection")}


PERSONAL = ["finetune", "finetune_select", "ditto", "ditto_select", "modules", "fedrep", "mix", "mix_select",
            "qffl_finetune_select"]
ORDER = ["local_only", "fedavg_global", *PERSONAL, "qffl"]


def federated_runs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each method that needs its own federated run: its overrides (``*_select``: the validation split)."""
    split = {"personal.val_fraction": args.val_fraction}
    ditto = {"personal.method": "ditto", "personal.lam": args.ditto_lambda}
    modules = {"personal.method": "modules", "personal.local_modules": "[v_proj]"}
    qffl = {"fairness.qffl_q": args.q, "fairness.qffl_lipschitz": args.qffl_lipschitz}
    return {
        "ditto_select": {**ditto, **split},
        "modules": modules,
        "fedrep": {**modules, "personal.head_steps": args.local_steps},
        "mix": {"personal.method": "mix"},
        "mix_select": {"personal.method": "mix", **split},
        "qffl": qffl,
        "qffl_finetune_select": {**qffl, "personal.method": "finetune", **split},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--examples", type=int, default=32, help="training examples per client")
    ap.add_argument("--eval-batches", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ditto-lambda", type=float, default=1.0)
    ap.add_argument("--q", type=float, default=1.0)
    ap.add_argument("--qffl-lipschitz", type=float, default=1e-3)
    ap.add_argument("--val-fraction", type=float, default=0.25,
                    help="*_select methods: share of each client's training examples that chooses its model")
    ap.add_argument("--methods", default=",".join(ORDER),
                    help=f"comma-separated subset of {','.join(ORDER)} (fedavg_global always runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--personal-lr", type=float, default=None, help="personal.lr (finetune, ditto, mix); default --lr")
    ap.add_argument("--personal-steps", type=int, default=None,
                    help="personal.steps (finetune: after federation; ditto, mix: per round); default --local-steps")
    ap.add_argument("--seed", type=int, default=0,
                    help="model.seed, data.seed and federation.seed: a replicate draws new LoRA A, rows and splits")
    ap.add_argument("--device", default="cpu", help="model.device: cpu, cuda, cuda:N or auto")
    ap.add_argument("--medquad", default=MEDQUAD, help="MedQuAD JSONL (shared/datasets/medquad.jsonl)")
    args = ap.parse_args()
    if args.quick:
        args.model, args.clients, args.rounds, args.local_steps, args.seq_len, args.examples = "tiny-llama", 3, 1, 2, 256, 8
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()} | {"fedavg_global"}
    if wanted - set(ORDER):
        ap.error(f"--methods {sorted(wanted - set(ORDER))} unknown; choose among {','.join(ORDER)}")
    order = [m for m in ORDER if m in wanted]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = overrides(args)

    def cfg(**extra: Any):
        return load_config(None, [f"{k}={v}" for k, v in {**base, **extra}.items()])

    def done(name: str, t: float) -> None:
        seconds[name] = time.perf_counter() - t
        print(f"{name} done after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    # Ditto's global side is plain FedAvg, so one run gives both; without Ditto the run skips its personal steps.
    ditto_cfg = cfg(**{"personal.method": "ditto", "personal.lam": args.ditto_lambda}) if "ditto" in wanted else cfg()
    with contextlib.redirect_stderr(io.StringIO()):
        model, data = prepare(ditto_cfg)
    init = model.get_state()
    ids = data.ids()
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    chosen: dict[str, dict[str, Any]] = {}  # *_select: what each client chose

    # FedAvg global, Ditto, and local fine-tuning of the FedAvg global, from one run.
    t = time.perf_counter()
    sim, state = run_rounds(ditto_cfg, model, data, init)
    final = sim.evaluate(state.global_state, ids)
    results["fedavg_global"] = per_client(final)
    if "ditto" in wanted:
        results["ditto"] = per_client(sim.capability(Personalization).evaluate(sim, state.global_state, state.client_states, ids,
                                                            global_eval=final), "personal")
    done("fedavg+ditto", t)
    for name, extra in (("finetune", {}), ("finetune_select", {"personal.val_fraction": args.val_fraction})):
        if name in wanted:
            t = time.perf_counter()
            ft = Personalization(EngineContext(cfg(**{"personal.method": "finetune", **extra}), model, data))
            report = ft.evaluate(sim, state.global_state, {}, ids, global_eval=final)
            results[name], chosen[name] = per_client(report, "personal"), selections(report)
            done(name, t)

    for name, extra in federated_runs(args).items():
        if name not in wanted:
            continue
        t = time.perf_counter()
        sim, state = run_rounds(cfg(**extra), model, data, init)
        if name == "qffl":
            results[name] = per_client(sim.evaluate(state.global_state, ids))
        else:
            report = sim.capability(Personalization).evaluate(sim, state.global_state, state.client_states, ids)
            results[name], chosen[name] = per_client(report, "personal"), selections(report)
        done(name, t)

    if "local_only" in wanted:  # each client alone, the same total steps in one AdamW run
        t = time.perf_counter()
        local: dict[str, float] = {}
        for i, cid in enumerate(ids):
            model.set_state(init)
            train_local(model, data.clients[cid].train, steps=args.rounds * args.local_steps,
                        batch_size=args.batch_size, lr=args.lr, seed=derive_seed(args.seed, i, 11))
            local[cid] = sim.evaluate(model.get_state(), [cid])["clients"][cid]["perplexity"]
        results["local_only"] = local
        done("local_only", t)

    stats = {m: fairness_stats(results[m]) for m in order}
    rows = [{"method": m, "mean_ppl": stats[m]["mean"], "std": stats[m]["std"], "worst_10pct": stats[m]["worst_10pct"],
             "jain": stats[m]["jain"], "worst_client": ", ".join(stats[m]["worst_clients"]),
             "chose_global": _chose_global(chosen.get(m))} for m in order]
    client_rows = [{"client": c, **{m: results[m][c] for m in order}} for c in ids]
    goals: dict[str, Any] = {}
    if "local_only" in results:
        goals["federated_beats_local_mean"] = stats["fedavg_global"]["mean"] < stats["local_only"]["mean"]
        # Federation followed by a personal step is still federated learning; it is reported apart from FedAvg.
        best_federated = min((m for m in order if m != "local_only"), key=lambda m: stats[m]["mean"])
        goals["best_federated_mean"] = best_federated
        goals["best_federated_beats_local_mean"] = stats[best_federated]["mean"] < stats["local_only"]["mean"]
    personal = [m for m in PERSONAL if m in results]
    if personal:
        best = min(personal, key=lambda m: stats[m]["worst_10pct"])
        goals["best_personal_worst10"] = best
        goals["best_personal_improves_worst10"] = stats[best]["worst_10pct"] < stats["fedavg_global"]["worst_10pct"]
    note = (f"python -m benchmarks.personalization --rounds {args.rounds} --local-steps {args.local_steps} "
            f"(model {args.model}, {len(ids)} clients, seq_len {args.seq_len}, {args.examples} train examples/client, "
            f"lr {args.lr}, Ditto lambda {args.ditto_lambda}, q {args.q}, L {args.qffl_lipschitz}, "
            f"val_fraction {args.val_fraction} for *_select"
            + (f", personal lr {args.personal_lr}" if args.personal_lr else "")
            + (f", personal steps {args.personal_steps}" if args.personal_steps else "")
            + (f", {args.eval_batches} x 8 held-out examples/client" if args.eval_batches else "")
            + (f", seed {args.seed}" if args.seed else "")
            + f", device {args.device})")
    append_table(NAME, rows, columns=["method", "mean_ppl", "std", "worst_10pct", "jain", "worst_client",
                                      "chose_global"], record=not args.quick, note=note)
    append_table(NAME, client_rows, columns=["client", *order], record=not args.quick,
                 note="per-client held-out perplexity of the same run")
    out = {"benchmark": "personalization", "stats": stats, "clients": results, "goals": goals, "chosen": chosen,
           "seconds": seconds, "wall_seconds": time.perf_counter() - t0}
    sys.stdout.write(json.dumps(out) + "\n")


def _chose_global(choices: dict[str, dict] | None) -> str:
    """``*_select``: how many clients kept the global model (finetune: and the step counts chosen)."""
    if not choices:
        return ""
    kept = sum(c["chosen"] == "global" for c in choices.values())
    steps = [c["steps"] for c in choices.values() if "steps" in c]
    return f"{kept}/{len(choices)}" + (f" (steps {','.join(map(str, steps))})" if steps else "")


if __name__ == "__main__":
    main()
