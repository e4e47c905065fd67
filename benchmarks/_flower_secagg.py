"""Flower's SecAgg+ round time, run in its own process by ``benchmarks.secagg``.

One Flower simulation (Ray backend, loopback only) of ``--rounds`` FedAvg rounds in
which every one of ``--n`` clients returns the same float32 vector of ``--length``
values, either through ``SecAggPlusWorkflow`` + ``secaggplus_mod`` (``--secagg``) or
through the plain ``DefaultWorkflow``. A round is timed from the strategy's
``configure_fit`` to its ``aggregate_fit``, which brackets all four SecAgg+ stages.
Prints one JSON object on its last line.

    python -m benchmarks._flower_secagg --n 10 --length 1000000 [--secagg] [--num-shares 3]
        [--threshold 2] [--max-weight 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--length", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secagg", action="store_true")
    ap.add_argument("--num-shares", type=int, default=3)
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--max-weight", type=float, default=1.0, help="SecAggPlusWorkflow's max_weight (fedlm's is 1)")
    ap.add_argument("--actors", type=int, default=0, help="Ray CPUs (ClientApps at once); 0: every core")
    args = ap.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    vector = np.random.default_rng(0).uniform(-0.5, 0.5, args.length).astype(np.float32)
    times: list[float] = []

    class Client(NumPyClient):
        def fit(self, parameters, config):
            return [vector], 1, {}

    def client_fn(context: Context):
        return Client().to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if args.secagg else [])

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            self._t0 = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            times.append(time.perf_counter() - self._t0)
            return out

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.n,
        min_available_clients=args.n,
        initial_parameters=ndarrays_to_parameters([np.zeros(args.length, np.float32)]),
    )
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds), strategy=strategy)
        fit = (
            SecAggPlusWorkflow(num_shares=args.num_shares, reconstruction_threshold=args.threshold,
                               max_weight=args.max_weight)
            if args.secagg
            else None
        )
        workflow = DefaultWorkflow(fit_workflow=fit) if fit is not None else DefaultWorkflow()
        workflow(grid, ctx)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.n,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.actors or os.cpu_count() or 2, "_node_ip_address": "127.0.0.1",
                          "include_dashboard": False, "log_to_driver": False},
        },
    )
    sys.stdout.write(json.dumps({"round_seconds": times}) + "\n")


if __name__ == "__main__":
    main()
