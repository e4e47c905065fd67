"""A deployed run, server side: ``fedlm run``'s loop with the clients on other machines.

:func:`run_federation` is what the ServerApp runs. It registers the connected clients,
builds the server half of the engine (:mod:`.parts`) and hands :class:`DeployedRounds`
to the same run-directory code and round loop as ``fedlm run``
(:func:`fedlm.commands.experiment.run_in_dir`): per round ``begin_round`` -> one
``train`` message per sampled client -> ``finish_round``, with federated evaluation
(each evaluation client scores its own held-out data and sends only sums) and
capabilities' end-of-run questions answered where the clients' data is. The run
directory, records, checkpoints and resume are therefore those of the simulator.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from fedlm.capabilities.secagg import SecureAggregation
from fedlm.commands.experiment import run_in_dir
from fedlm.commands.run_dir import default_run_dir
from fedlm.config.schema import ExperimentConfig
from fedlm.deploy import wire
from fedlm.deploy.client_node import config_from_run
from fedlm.deploy.messaging import Courier
from fedlm.deploy.model_cache import adapted_model
from fedlm.deploy.parts import server_simulation
from fedlm.deploy.secagg_remote import FORWARDED, RemoteSecAgg
from fedlm.engine.checkpoint import ServerState
from fedlm.errors import FedlmError
from fedlm.eval.metrics import LMScore
from fedlm.privacy.secagg.stages import SecAggRound

log = logging.getLogger(__name__)

TRAIN, EVALUATE = "train", "evaluate"


class DeployedRounds:
    """The server half of a deployed federation and the messages of its rounds (a round driver)."""

    def __init__(self, config: ExperimentConfig, courier: Courier, *, min_nodes: int) -> None:
        self.config, self.courier = config, courier
        clients = courier.register(min_nodes=min_nodes, wait_s=config.deploy.register_s)
        formats = {c.get("format") for c in clients.values()}
        if len(formats) != 1:
            raise FedlmError(f"clients disagree on the data format ({sorted(map(str, formats))}); set data.format")
        self.format = str(formats.pop())
        self.sizes = {cid: {k: c[k] for k in ("train", "heldout", "chars", "labels")} for cid, c in clients.items()}
        self.model = adapted_model(config)
        self.sim = server_simulation(config, self.model, self.sizes, self.format)
        secure = self.sim.capability(SecureAggregation)
        if secure is not None:  # the same SecAgg+ rounds, over the network
            secure.use_opener(RemoteSecAgg(config, secure.opener.vector_len, courier))
        self.shapes = {k: tuple(v) for k, v in self.sim.shared(self.model.shapes()).items()}
        # the largest reply accepted before decoding: the config's cap, else float64 plus a
        # SecAgg+ mask's 8 bytes per value and 1 MiB of framing (honest payloads are far smaller)
        self.max_bytes = config.federation.max_update_bytes or (
            16 * sum(math.prod(s) for s in self.shapes.values()) + (1 << 20))
        self.capabilities = self.sim.capabilities
        self.cohort_size = self.sim.cohort_size
        self.eval_ids = self.sim.eval_ids
        self.data = self.sim.data

    def init_state(self) -> ServerState:
        return self.sim.init_state()

    def run_round(self, state: ServerState, *, on_client: Callable[[str], None] | None = None
                  ) -> tuple[ServerState, dict[str, Any]]:
        t_round = time.perf_counter()
        self.courier.refresh()  # a node that restarted rejoins here
        opened = self.sim.begin_round(state)
        plan = opened.plan
        secagg = plan.get(SecAggRound)
        common = {**wire.plan_to_fields(plan), "broadcast": opened.broadcast,
                  "meta": json.dumps({"clients": self.sizes, "format": self.format}).encode()}
        requests = {}
        for cid in self.sim.trainers(plan):  # e.g. a SecAgg+ dropout of the key phases does not train
            requests[cid] = {**common, FORWARDED: secagg.session.forwarded[cid]} if secagg is not None else common
        got = self.courier.exchange(TRAIN, requests, group=str(plan.round), trains=True,
                                    reply_bytes=len(opened.broadcast))
        outcomes = []
        for cid in requests:
            if cid in got.replies:
                try:
                    outcomes.append(wire.outcome_from_fields(
                        got.replies[cid], expect=cid, round_id=plan.round, shapes=self.shapes,
                        max_bytes=self.max_bytes, max_examples=int(self.sizes[cid]["train"])))
                except FedlmError as exc:  # the node's dropout this round, never the federation's end
                    log.warning("round %s: client %r sent an unreadable reply: %s", plan.round, cid, exc)
                    outcomes.append(wire.failed(cid, "unreadable", str(exc)[:500]))
            else:
                outcomes.append(wire.failed(cid, "dropped", got.missing.get(cid, "no reply")))
            if on_client is not None and outcomes[-1].update is not None:
                on_client(cid)
        state, record = self.sim.finish_round(state, opened, outcomes, started=t_round)
        record["deploy"] = {"missing": got.missing, "bytes_down": got.bytes_down, "bytes_up": got.bytes_up,
                            "train_exchange_seconds": got.seconds}
        return state, record

    def evaluate_round(self, state: ServerState, client_ids: list[str] | None = None) -> dict[str, Any]:
        """Federated evaluation: like ``Simulation.evaluate``, from the clients' sums."""
        replies, missing = self._ask(state, client_ids or self.eval_ids, group=f"eval-{state.round}", request={},
                                     parse=wire.eval_from_fields)
        total, per_client = LMScore(), {}
        for cid, m in replies.items():
            score = LMScore(m["loss_sum"], m["correct"], m["tokens"])
            per_client[cid] = score.as_dict()
            total = total + score
        return {**total.as_dict(), "clients": per_client, "missing": missing}

    def ask_clients(self, capability: str, state: ServerState, client_ids: list[str],
                    request: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """A capability's end-of-run question, answered on each client's node (``client_query``)."""
        replies, _ = self._ask(state, client_ids, group=f"{capability}-{state.round}",
                               request={"capability": capability, "request": request, "clients": self.sizes,
                                        "format": self.format}, parse=wire.answer_from_fields)
        return {cid: replies[cid] for cid in client_ids if cid in replies}

    def _ask(self, state: ServerState, ids: list[str], *, group: str, request: dict[str, Any],
             parse: Callable[..., dict[str, Any]]) -> tuple[dict[str, dict], list[str]]:
        fields = {"state": wire.tensors_to_bytes(state.global_state), "meta": json.dumps(request).encode()}
        got = self.courier.exchange(EVALUATE, {cid: fields for cid in ids}, group=group,
                                    trains="capability" in request)
        replies = {}
        for cid in ids:
            if cid in got.replies:
                try:
                    replies[cid] = parse(got.replies[cid], expect=cid)
                except FedlmError as exc:  # an unreadable answer counts as a missing one
                    log.warning("%s: client %r sent an unreadable answer: %s", group, cid, exc)
        return replies, sorted(set(ids) - set(replies))


def run_federation(courier: Courier, run_config: dict[str, Any]) -> Path:
    """Run (or resume, ``resume=true``) the configured federation; returns the run directory."""
    config = config_from_run(run_config)
    run_dir = default_run_dir(config, str(run_config.get("out-dir") or "") or None)
    resume = bool(run_config.get("resume", False))
    min_nodes = int(run_config.get("nodes") or 0) or config.deploy.min_nodes or 1
    t_start = time.perf_counter()
    rounds = DeployedRounds(config, courier, min_nodes=min_nodes)
    run_in_dir(rounds, config, rounds.model, run_dir=run_dir, resume=resume, console=Console(stderr=True),
               started=t_start, engine="flower")
    return run_dir


__all__ = ["DeployedRounds", "run_federation"]
