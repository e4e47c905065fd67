"""A deployed run, server side: ``fedlm run``'s loop with the clients on other machines.

:func:`run_federation` is what the ServerApp runs. It registers the connected clients,
builds the server half of the simulation (:mod:`.parts`) and then, per round,
``begin_round`` -> one ``train`` message per sampled client -> ``finish_round``, with
federated evaluation (each evaluation client scores its own held-out data and sends
only sums). It writes the run directory of DESIGN.md with fedlm's own writers
(``metrics.jsonl``, atomic per-round checkpoints, ``summary.json``, the adapter,
``report.html``) and resumes from the last checkpoint when asked to, so a server killed
mid-run loses no completed round.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fedlm.config.deploy import DeployConfig
from fedlm.config.loader import dump_config
from fedlm.config.schema import ExperimentConfig
from fedlm.errors import CheckpointError, FedlmError
from fedlm.eval.fairness import client_fairness
from fedlm.eval.metrics import LMScore
from fedlm.report.metrics_log import MetricsLog, write_json
from fedlm.runtime.audit_trail import round_audit
from fedlm.runtime.checkpoint import ServerState, save_checkpoint
from fedlm.runtime.experiment import build_summary, config_digest, final_model_dir, resume_state
from fedlm.runtime.flower import wire
from fedlm.runtime.flower.client_node import config_from_run
from fedlm.runtime.flower.messaging import Courier
from fedlm.runtime.flower.model_cache import adapted_model
from fedlm.runtime.flower.parts import server_simulation
from fedlm.runtime.flower.secagg_remote import FORWARDED, RemoteSecAgg
from fedlm.runtime.personal_run import personal_report
from fedlm.runtime.secagg_round import SECAGG_KEY, will_upload
from fedlm.runtime.simulation import Simulation

TRAIN, EVALUATE = "train", "evaluate"


def deploy_digest(config: ExperimentConfig) -> str:
    """Resume identity: :func:`config_digest`, ignoring the (tunable) timeouts."""
    return config_digest(config.model_copy(update={"deploy": DeployConfig()}))


class DeployedRounds:
    """The server half of a deployed federation and the messages of its rounds."""

    def __init__(self, config: ExperimentConfig, courier: Courier, *, min_nodes: int) -> None:
        self.config, self.courier = config, courier
        clients = courier.register(min_nodes=min_nodes, wait_s=config.deploy.register_s)
        formats = {c.get("format") for c in clients.values()}
        if len(formats) != 1:
            raise FedlmError(f"clients disagree on the data format ({sorted(map(str, formats))}); set data.format")
        self.format = str(formats.pop())
        self.sizes = {cid: {k: c[k] for k in ("train", "heldout", "chars", "labels")} for cid, c in clients.items()}
        self.model = adapted_model(config)
        self.sim: Simulation = server_simulation(config, self.model, self.sizes, self.format)
        if self.sim.secagg is not None:  # the same SecAgg+ rounds, over the network
            self.sim.secagg = RemoteSecAgg(config, self.sim.secagg.vector_len, courier)

    def run_round(self, state: ServerState) -> tuple[ServerState, dict[str, Any]]:
        t_round = time.perf_counter()
        self.courier.refresh()  # a node that restarted rejoins here
        opened = self.sim.begin_round(state)
        plan = opened.plan
        session = plan.extra.get(SECAGG_KEY)
        common = {**wire.plan_to_fields(plan), "broadcast": opened.broadcast,
                  "meta": json.dumps({"clients": self.sizes, "format": self.format}).encode()}
        requests = {}
        for cid in plan.cohort:
            if will_upload(plan, cid):  # a SecAgg+ dropout of the key phases does not train
                requests[cid] = {**common, FORWARDED: session.forwarded[cid]} if session is not None else common
        got = self.courier.exchange(TRAIN, requests, group=str(plan.round), trains=True,
                                    reply_bytes=len(opened.broadcast))
        outcomes = []
        for cid in requests:
            if cid in got.replies:
                try:
                    outcomes.append(wire.outcome_from_fields(got.replies[cid], expect=cid))
                except FedlmError as exc:
                    outcomes.append(wire.failed(cid, "unreadable", str(exc)))
            else:
                outcomes.append(wire.failed(cid, "dropped", got.missing.get(cid, "no reply")))
        state, record = self.sim.finish_round(state, opened, outcomes, started=t_round)
        record["deploy"] = {"missing": got.missing, "bytes_down": got.bytes_down, "bytes_up": got.bytes_up}
        return state, record

    def evaluate(self, state: ServerState, client_ids: list[str] | None = None) -> dict[str, Any]:
        """Federated evaluation: like ``Simulation.evaluate``, from the clients' sums."""
        replies, missing = self._scores(state, client_ids or self.sim.eval_ids, personal=False)
        total, per_client = LMScore(), {}
        for cid, m in replies.items():
            score = _score(m)
            per_client[cid] = score.as_dict()
            total = total + score
        return {**total.as_dict(), "clients": per_client, "missing": missing}

    def evaluate_personal(self, state: ServerState, final: dict[str, Any]) -> dict[str, Any]:
        """summary.json's ``personal``: ``final``'s global metrics next to each client's personal model."""
        ids = sorted(final.get("clients", {})) or self.sim.eval_ids
        replies, missing = self._scores(state, ids, personal=True)
        scores = {cid: (final["clients"][cid], _score(m["personal"]).as_dict() if m.get("personal") else None)
                  for cid, m in replies.items() if cid in final.get("clients", {})}
        choices = {cid: m["selection"] for cid, m in replies.items() if m.get("selection")}
        return {**personal_report(self.config.personal.method, scores, choices), "missing": missing}

    def _scores(self, state: ServerState, ids: list[str], *, personal: bool) -> tuple[dict[str, dict], list[str]]:
        asked = {"personal": True, "clients": self.sizes, "format": self.format} if personal else {}
        fields = {"state": wire.tensors_to_bytes(state.global_state), "meta": json.dumps(asked).encode()}
        group = f"{'personal' if personal else 'eval'}-{state.round}"
        got = self.courier.exchange(EVALUATE, {cid: fields for cid in ids}, group=group, trains=personal)
        replies = {cid: wire.read_meta(got.replies[cid]) for cid in ids if cid in got.replies}
        return replies, sorted(got.missing)


def _score(m: dict[str, Any]) -> LMScore:
    return LMScore(float(m["loss_sum"]), int(m["correct"]), int(m["tokens"]))


def run_federation(courier: Courier, run_config: dict[str, Any]) -> Path:
    """Run (or resume, ``resume=true``) the configured federation; returns the run directory."""
    config = config_from_run(run_config)
    out = str(run_config.get("out-dir") or "")
    run_dir = Path(out or config.output.dir or f"runs/{config.name}-{datetime.now():%Y%m%d-%H%M%S}")
    resume = bool(run_config.get("resume", False))
    min_nodes = int(run_config.get("nodes") or 0) or config.deploy.min_nodes or 1
    t_start = time.perf_counter()
    rounds = DeployedRounds(config, courier, min_nodes=min_nodes)
    sim, log, ckpt_dir, digest = rounds.sim, MetricsLog(run_dir / "metrics.jsonl"), run_dir / "checkpoints", deploy_digest(config)
    if resume:
        state, initial = resume_state(sim, log, ckpt_dir, digest=digest)
    else:
        if (run_dir / "metrics.jsonl").exists():
            raise CheckpointError(f"{run_dir} already holds a run; resume it or choose another output directory")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = sim.init_state()
        initial = {"type": "eval", "round": 0, **rounds.evaluate(state)}
        log.append(initial)
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
    fed, outc = config.federation, config.output
    while state.round < fed.rounds:
        if sim.dp is not None and sim.dp.check_budget(state) is not None:
            break
        state, record = rounds.run_round(state)
        if sim.dp is not None:
            state, record = sim.dp.after_round(state, record)
        record["audit"] = round_audit(record)
        log.append(record)
        r = state.round
        if r % config.eval.every == 0 or r == fed.rounds:
            ids = record["cohort"] if config.eval.clients == "sampled" else None
            log.append({"type": "eval", "round": r, **rounds.evaluate(state, ids)})
        if r % outc.checkpoint_every == 0 or r == fed.rounds:
            save_checkpoint(ckpt_dir, state, config_digest=digest, keep=outc.keep_checkpoints)
    records = log.read()
    finals = [x for x in records if x.get("type") == "eval" and x.get("round") == state.round]
    final = finals[-1] if finals else {"type": "eval", "round": state.round, **rounds.evaluate(state)}
    model = rounds.model
    model.set_state(state.global_state)
    model.save(run_dir / final_model_dir(config))
    sim.hetero.save(run_dir / final_model_dir(config), state.server_states)
    summary = build_summary(config, records, initial, final, state, wall=time.perf_counter() - t_start, model=model,
                            data=sim.data)
    summary["engine"] = "flower"
    summary["fairness"] = client_fairness(final.get("clients", {}))
    summary["personal"] = None
    if config.personal.method != "none":  # every evaluated client: global vs its own personal model
        summary["personal"] = rounds.evaluate_personal(state, final)
    if sim.dp is not None:
        summary["privacy"] = sim.dp.summary(state)
    write_json(run_dir / "summary.json", summary)
    if outc.report:
        from fedlm.report.html import write_report

        write_report(run_dir)
    return run_dir


__all__ = ["DeployedRounds", "deploy_digest", "run_federation"]
