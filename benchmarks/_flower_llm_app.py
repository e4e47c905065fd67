"""A Flower-native LLM app, written the way Flower's FlowerTune examples write one.

Built only from Flower's Message API and Hugging Face code (no fedlm): the ClientApp
loads the HF model with a PEFT LoRA adapter in each ``train`` message (as FlowerTune's
``client_app.py`` does), puts the received adapter arrays into it, trains, and replies with
the adapter's arrays and ``num-examples``; the ServerApp runs Flower's own
:class:`flwr.serverapp.strategy.FedAvg` for ``--rounds`` rounds with no client-side
evaluation. The training step is :mod:`benchmarks._hf_workload`'s, shared with the floor.

``python -m benchmarks._flower_llm_app --model DIR --data DIR --clients N --rounds R``
runs it in Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend,
one CPU per ClientApp) and prints one JSON line: each round's seconds (from the
strategy's ``evaluate_fn``, which Flower calls before round 1 and after every round) and
the wall time from the start of this process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path

_T0 = time.perf_counter()
_BLOCKS: dict[int, list] = {}  # tokenised partitions, cached per ClientApp process (FlowerTune caches its dataset)


def build_apps(model_dir: str, data_dir: str, clients: int, rounds: int, stamps: list[float]):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from benchmarks._hf_workload import client_blocks, load_lora_model, train_steps

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        model, tok = load_lora_model(model_dir)
        set_peft_model_state_dict(model, msg.content["arrays"].to_torch_state_dict())
        if pid not in _BLOCKS:
            _BLOCKS[pid] = client_blocks(Path(data_dir) / f"client_{pid}.jsonl", tok)
        rnd = int(msg.content["config"].get("server-round", 0))
        n = train_steps(model, _BLOCKS[pid], seed=rnd * 100_003 + pid)
        reply = RecordDict({"arrays": ArrayRecord(get_peft_model_state_dict(model)),
                            "metrics": MetricRecord({"num-examples": n})})
        return Message(content=reply, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model, _ = load_lora_model(model_dir)
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                          min_available_nodes=clients)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            stamps.append(time.perf_counter())  # before round 1, then after each round
            return MetricRecord()

        strategy.start(grid=grid, initial_arrays=ArrayRecord(get_peft_model_state_dict(model)),
                       num_rounds=rounds, train_config=ConfigRecord({}), evaluate_fn=evaluate)

    return server_app, client_app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder of client_<i>.jsonl (i = the node's partition-id)")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    stamps: list[float] = []
    server_app, client_app = build_apps(args.model, args.data, args.clients, args.rounds, stamps)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients, backend_config={
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 2, "_node_ip_address": "127.0.0.1",
                      "include_dashboard": False, "log_to_driver": False},
    })
    rounds = [b - a for a, b in itertools.pairwise(stamps)]
    sys.stdout.write(json.dumps({"round_seconds": rounds, "total_s": time.perf_counter() - _T0}) + "\n")


if __name__ == "__main__":
    main()
