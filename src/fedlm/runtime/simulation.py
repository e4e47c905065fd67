"""The in-process federated engine: one base model, per-client adapter state.

``Simulation.run_round`` is the round of DESIGN.md, top to bottom: plan, broadcast,
local training and client stages per sampled client, server stages, apply the step.
Every random choice is derived from (seed, round, client), so a run is reproducible
and a resumed run is identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedlm.aggregation.robust_stages import FLTRUST_ROOT_KEY
from fedlm.attacks import malicious_clients
from fedlm.client.dp_sgd import train_local_dp_sgd
from fedlm.client.trainer import train_local
from fedlm.compression.stages import decode_broadcast, encode_broadcast
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData
from fedlm.errors import FedlmError, UpdateRejected
from fedlm.eval.metrics import LMScore, score_lm
from fedlm.models.adapters import AdaptedModel
from fedlm.runtime import pipelines, secagg_round
from fedlm.runtime.checkpoint import ServerState
from fedlm.runtime.contribution_run import build_contribution_run
from fedlm.runtime.hetero_run import HeteroRun
from fedlm.runtime.personal_run import PersonalRun
from fedlm.runtime.privacy_run import build_dp_run
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan, TensorDict

# Client-private state kept beside the client stages' states (never sent anywhere).
OPTIMIZER_KEY = "local_optimizer"


@dataclass(frozen=True)
class OpenRound:
    """A planned round: its plan, the broadcast bytes and their decoded tensors."""

    plan: RoundPlan
    broadcast: bytes
    received: TensorDict


@dataclass
class ClientOutcome:
    """What one client's part of a round produced.

    ``update`` is what goes to the server (None when the client sends nothing, and then
    ``failure`` says why); ``state`` is what the client keeps for its next round (None:
    keep what it had).
    """

    client_id: str
    state: dict | None = None
    update: ClientUpdate | None = None
    failure: dict[str, str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


class Simulation:
    """Runs federated rounds in one process.

    Args:
        config: the experiment.
        model: the one base model with its trainable part.
        data: every client's examples.
    """

    def __init__(self, config: ExperimentConfig, model: AdaptedModel, data: FederatedData) -> None:
        self.config = config
        self.model = model
        self.data = data
        self.client_ids = data.ids()
        self.dp = build_dp_run(config, data)  # None without DP; calibrates z before training
        self.client_pipeline = pipelines.client_pipeline(config, self.client_ids, dp=self.dp)
        self.server_pipeline = pipelines.server_pipeline(config, model.shapes(), dp=self.dp, frozen=model.frozen_lora_state())
        self.down_codec = pipelines.download_codec(config)
        self.hetero = HeteroRun(config, model, self.client_ids)  # profiles, local objectives, LoRA residuals
        self.explain = build_contribution_run(config, model, data)  # explain.contribution / keep_updates
        self.personal = PersonalRun(config, model, data)  # personal modules, Ditto, q-FFL's client loss
        self.secagg = (  # one SecAgg+ session per round when secure aggregation is on
            secagg_round.SecAggRounds(config, model.shapes(), train_sizes={c: len(d.train) for c, d in data.clients.items()})
            if config.secure_aggregation.enabled else None
        )
        fed = config.federation
        k = fed.clients_per_round or max(1, round((fed.fraction or 0) * len(self.client_ids)))
        self.cohort_size = min(k, len(self.client_ids))
        if config.robust.aggregator != "fedavg":
            config.robust.check_cohort(self.cohort_size)
        self.root_examples = _root_examples(config, data)
        # Data attackers may train longer than honest clients (attack.local_steps).
        self.attacker_steps = config.attack.local_steps if config.attack.poisons_data else None
        self.malicious = frozenset(malicious_clients(config.attack, self.client_ids)) if self.attacker_steps else frozenset()
        n_eval = min(config.eval.max_clients or len(self.client_ids), len(self.client_ids))
        pick = np.random.default_rng(derive_seed(fed.seed, 7)).choice(len(self.client_ids), n_eval, replace=False)
        self.eval_ids = [self.client_ids[i] for i in sorted(pick)]

    # ------------------------------------------------------------------ state
    def init_state(self) -> ServerState:
        return ServerState(
            round=0,
            global_state=self.model.get_state(),
            server_states=self.server_pipeline.init(),
            totals={"bytes_up": 0, "bytes_down": 0},
        )

    def plan_round(self, r: int) -> RoundPlan:
        """Seeded cohort sampling without replacement and the round's learning rate."""
        fed = self.config.federation
        rng = np.random.default_rng(derive_seed(fed.seed, r))
        pick = rng.choice(len(self.client_ids), self.cohort_size, replace=False)
        cohort = tuple(self.client_ids[i] for i in sorted(pick))
        if self.dp is not None and self.dp.poisson:  # DP's Poisson sampling: each client w.p. q
            cohort = self.dp.poisson_cohort(rng, self.client_ids)
        steps = fed.local_steps or 0  # per-client when local_epochs is set (see client_round)
        return RoundPlan(round=r, cohort=cohort, lr=self.lr_at(r), local_steps=steps, seed=derive_seed(fed.seed, r, 1))

    def lr_at(self, r: int) -> float:
        """The client lr at the start of round ``r`` (1-based)."""
        fed = self.config.federation
        if fed.lr_schedule_unit == "step":
            return self._scheduled((r - 1) * (fed.local_steps or 1), fed.rounds * (fed.local_steps or 1))
        return self._scheduled(r - 1, fed.rounds)

    def step_lrs(self, r: int, steps: int) -> list[float] | None:
        """Each local step's lr in round ``r`` when the schedule counts steps; else None (the round's lr)."""
        fed = self.config.federation
        if fed.lr_schedule_unit != "step" or (fed.lr_schedule == "constant" and not fed.warmup):
            return None
        h = fed.local_steps or 1
        return [self._scheduled((r - 1) * h + k, fed.rounds * h) for k in range(steps)]

    def _scheduled(self, t: int, total: int) -> float:
        """The schedule at position ``t`` of ``total`` (0-based).

        A linear warm-up over the first ``warmup`` positions (lr x (t + 1) / warmup), then lr
        decaying to lr x min_lr_ratio at the last position (cosine, linear) or held (constant).
        """
        fed = self.config.federation
        if t < fed.warmup:
            return fed.lr * (t + 1) / fed.warmup
        t, total = t - fed.warmup, total - fed.warmup
        if fed.lr_schedule == "constant" or total == 1:
            return fed.lr
        progress = min(t / (total - 1), 1.0)  # an attacker's extra steps stay at the final lr
        low = fed.lr * fed.min_lr_ratio
        if fed.lr_schedule == "cosine":
            return low + (fed.lr - low) * 0.5 * (1 + math.cos(math.pi * progress))
        return fed.lr - (fed.lr - low) * progress

    # ------------------------------------------------------------------ round
    def run_round(
        self, state: ServerState, *, on_client: Callable[[str], None] | None = None
    ) -> tuple[ServerState, dict[str, Any]]:
        """One federated round; returns the new state and the round's metrics record.

        It is the three public parts in order, which a deployment runs on different
        machines: ``begin_round`` (server), ``client_round`` (each client, from the
        broadcast bytes) and ``finish_round`` (server, from what the clients sent).
        """
        t_round = time.perf_counter()
        opened = self.begin_round(state)
        outcomes = []
        for cid in opened.plan.cohort:
            if not secagg_round.will_upload(opened.plan, cid):  # dropped out of secure aggregation
                continue
            outcome = self.client_round(opened.plan, cid, opened.received, state.client_states.get(cid))
            outcomes.append(outcome)
            if on_client is not None and outcome.update is not None:
                on_client(cid)
        return self.finish_round(state, opened, outcomes, started=t_round)

    def begin_round(self, state: ServerState) -> OpenRound:
        """Plan the next round and encode the broadcast (the global trainable tensors)."""
        self.hetero.sync_base(state.server_states)  # FedEx-LoRA: base weights as of this state (resume)
        plan = self.hetero.extend_plan(self.plan_round(state.round + 1), state.server_states, state.global_state)
        if self.dp is not None:  # clip_norm, dp_denominator, expected_cohort_size
            plan = self.dp.extend_plan(plan, state.server_states)
        if self.secagg is not None:  # SecAgg+ key phases run before local training
            plan = self.secagg.open(plan)
        down, _ = encode_broadcast(self.down_codec, state.global_state, seed=plan.seed)
        return OpenRound(plan=plan, broadcast=down, received=decode_broadcast(self.down_codec, down))

    def client_round(
        self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict | None
    ) -> ClientOutcome:
        """One client's part of a round: local training, then the client stages.

        ``received`` is the decoded broadcast and ``client_state`` what this client kept
        from its previous round (None at first). Nothing here reads another client's data.
        """
        fed = self.config.federation
        res = self.hetero.resources(cid, len(self.data.clients[cid].train))
        cstate = client_state or {**self.client_pipeline.init(), OPTIMIZER_KEY: {}}
        if res.steps == 0:  # a straggler past resources.time_budget sends nothing
            return ClientOutcome(cid, failure={
                "client_id": cid, "reason": "straggler", "side": "client",
                "detail": f"needs more than resources.time_budget={self.config.resources.time_budget} s"})
        t0 = time.perf_counter()
        update, result = self.local_update(plan, cid, received, optimizer_state=cstate.get(OPTIMIZER_KEY), client_state=cstate)
        train_seconds = time.perf_counter() - t0
        if fed.keep_optimizer_state:
            cstate = {**cstate, OPTIMIZER_KEY: result.optimizer_state}
        cstate = self.hetero.after_local(cid, cstate, plan, update, result)  # SCAFFOLD's c_i
        cstate = self.personal.after_local(plan, cid, received, cstate)  # personal tensors stay in the client's state
        metrics = {"train_loss": result.mean_loss, "steps": result.steps, **self.hetero.client_metrics(cid, res)}
        try:
            new_state, update, stage_metrics = self.client_pipeline.apply(cstate, update, plan)
        except UpdateRejected as exc:  # e.g. a diverged client cannot encode NaN: it sends nothing
            return ClientOutcome(cid, metrics=metrics, train_seconds=train_seconds, failure={
                "client_id": cid, "reason": exc.reason, "detail": exc.detail, "side": "client"})
        metrics.update(_flatten(stage_metrics))
        return ClientOutcome(cid, state=new_state, update=update, metrics=metrics, train_seconds=train_seconds,
                             stage_seconds=dict(self.client_pipeline.last_seconds))

    def finish_round(
        self, state: ServerState, opened: OpenRound, outcomes: list[ClientOutcome], *, started: float | None = None
    ) -> tuple[ServerState, dict[str, Any]]:
        """Server stages over what the clients sent, the global step and the round record."""
        t_round = time.perf_counter() if started is None else started
        fed = self.config.federation
        plan, down, received = opened.plan, opened.broadcast, opened.received
        updates = [o.update for o in outcomes if o.update is not None]
        client_failures = [o.failure for o in outcomes if o.failure is not None]
        client_states = {**state.client_states, **{o.client_id: o.state for o in outcomes if o.state is not None}}
        client_metrics = {o.client_id: o.metrics for o in outcomes if o.metrics}
        train_seconds = sum(o.train_seconds for o in outcomes)
        stage_seconds: dict[str, float] = {}  # per stage, client stages summed over the cohort
        for o in outcomes:
            _add_seconds(stage_seconds, o.stage_seconds)

        # Server: unmask -> decode -> validate, then aggregate -> noise -> optimize.
        t0 = time.perf_counter()
        if self.root_examples:  # FLTrust: the server's own update on its root data
            root, _ = self.local_update(plan, "__server_root__", received, examples=self.root_examples)
            plan = replace(plan, extra={**plan.extra, FLTRUST_ROOT_KEY: root.tensors})
        value = CohortValue(updates=updates, rejected=client_failures)
        states, value, intake = self.server_pipeline.apply(
            state.server_states, value, plan, kinds=pipelines.INTAKE_KINDS
        )
        _add_seconds(stage_seconds, self.server_pipeline.last_seconds)
        contribution = self.explain.round(plan, state.global_state, value.updates) if self.explain else None
        applied = secagg_round.contributors(value) >= fed.min_updates  # a secure sum counts its members
        combine: dict[str, Any] = {}
        new_global = state.global_state
        if applied:
            states, value, combine = self.server_pipeline.apply(states, value, plan, kinds=pipelines.COMBINE_KINDS)
            _add_seconds(stage_seconds, self.server_pipeline.last_seconds)
            self.hetero.sync_base(states)  # fold this round's FedEx-LoRA residual into the base
            step = value.aggregate or {}
            new_global = {k: v + step[k].to(v.dtype) if k in step else v  # personal modules: no step
                          for k, v in state.global_state.items()}
        elif fed.on_too_few_updates == "abort" and not secagg_round.aborted(intake):  # a SecAgg+ abort skips
            raise FedlmError(
                f"round {plan.round}: {len(value.updates)} valid update(s), fewer than federation.min_updates="
                f"{fed.min_updates}; rejected: {value.rejected}. Lower min_updates or set on_too_few_updates=skip"
            )
        server_seconds = time.perf_counter() - t0

        bytes_up = sum(len(u.payload or b"") for u in updates)
        bytes_down = (len(down) + self.hetero.extra_down_bytes(state.server_states)) * len(plan.cohort)
        totals = {
            "bytes_up": state.totals.get("bytes_up", 0) + bytes_up,
            "bytes_down": state.totals.get("bytes_down", 0) + bytes_down,
        }
        losses = [m["train_loss"] for m in client_metrics.values()]
        record = {
            "type": "round",
            "round": plan.round,
            "cohort": list(plan.cohort),
            "lr": plan.lr,
            "train_loss": float(np.mean(losses)) if losses else None,
            "applied": applied,
            "accepted": len(value.updates),
            "rejected": value.rejected,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "clients": client_metrics,
            "server": _jsonable({**intake, **combine}),
            "seconds": {
                "train": train_seconds,
                "server": server_seconds,
                "round": time.perf_counter() - t_round,
                "stages": stage_seconds,
            },
        }
        if contribution is not None:  # who contributed what (explain.contribution)
            record["seconds"]["contribution"] = contribution.pop("seconds")
            record["seconds"]["server"] -= record["seconds"]["contribution"]  # the server stages alone
            record["contribution"] = contribution
        new_state = ServerState(
            round=plan.round, global_state=new_global, server_states=states, client_states=client_states, totals=totals
        )
        return new_state, record

    def local_update(
        self,
        plan: RoundPlan,
        cid: str,
        global_state: TensorDict,
        *,
        optimizer_state: dict | None = None,
        examples: list | None = None,
        client_state: dict | None = None,
    ):
        """Local training of one client from the broadcast; returns its delta and result."""
        fed = self.config.federation
        train = examples if examples is not None else self.data.clients[cid].train
        start = self.personal.start(cid, self.hetero.client_start(cid, global_state), client_state)
        self.model.set_state(start)  # truncated to the client's rank, with its personal modules
        fair = self.personal.broadcast_loss(cid, train)  # q-FFL's F_k at the start state ({} when off)
        self.personal.fit_head(plan, cid, train)  # FedRep: the personal modules first (no-op otherwise)
        res = self.hetero.resources(cid, len(train))  # its profile's steps and batch size
        steps = self.attacker_steps if cid in self.malicious else res.steps
        index = self.client_ids.index(cid) if cid in self.client_ids else len(self.client_ids)
        seed = derive_seed(plan.seed, index)
        dp_sgd = self.config.privacy.dp_sgd
        if dp_sgd.enabled:  # sample-level DP inside the client (Opacus)
            result = train_local_dp_sgd(
                self.model, train, steps=steps, batch_size=res.batch_size, lr=plan.lr, seed=seed,
                lr_steps=self.step_lrs(plan.round, steps),
                noise_multiplier=dp_sgd.noise_multiplier, max_grad_norm=dp_sgd.max_grad_norm,
                weight_decay=fed.weight_decay,
            )
        else:
            result = train_local(
                self.model,
                train,
                steps=steps,
                batch_size=res.batch_size,
                lr=plan.lr,
                lr_steps=self.step_lrs(plan.round, steps),
                seed=seed,
                weight_decay=fed.weight_decay,
                max_grad_norm=fed.max_grad_norm,
                optimizer_state=optimizer_state if fed.keep_optimizer_state else None,
                **self.hetero.train_kwargs(cid, plan, client_state),  # FedProx, SCAFFOLD, rank masks
                **self.personal.train_kwargs(),  # FedRep: the personal modules frozen
            )
        local = self.model.get_state()
        delta = self.personal.shared({k: local[k] - global_state[k] for k in local})  # personal modules stay local
        update = ClientUpdate(client_id=cid, round=plan.round, num_examples=len(train), tensors=delta,
                              metrics={"local_steps": result.steps, **fair})  # FedNova, SCAFFOLD, q-FFL read it
        return update, result

    # ------------------------------------------------------------------ eval
    def evaluate(self, global_state: TensorDict, client_ids: list[str] | None = None) -> dict[str, Any]:
        """Held-out loss, perplexity and token accuracy, overall and per client."""
        ev = self.config.eval
        self.model.set_state(global_state)
        total = LMScore()
        per_client: dict[str, dict[str, float]] = {}
        pad = self.model.tokenizer.pad_token_id
        for cid in client_ids or self.eval_ids:
            score = score_lm(
                self.model.model, self.data.clients[cid].heldout, pad_id=pad, batch_size=ev.batch_size,
                max_batches=ev.max_batches_per_client,
            )
            per_client[cid] = score.as_dict()
            total = total + score
        return {**total.as_dict(), "clients": per_client}


def _root_examples(config: ExperimentConfig, data: FederatedData) -> list:
    """FLTrust's root dataset: a small clean set the server owns.

    In simulation it is stood in for by the first ``robust.fltrust_root_fraction`` of the
    pooled held-out examples (the paper's server collects about 100 clean examples).
    """
    if config.robust.aggregator != "fltrust":
        return []
    pooled = [ex for c in data.clients.values() for ex in c.heldout]
    return pooled[: max(1, math.ceil(config.robust.fltrust_root_fraction * len(pooled)))]


def _add_seconds(total: dict[str, float], seconds: dict[str, float]) -> None:
    for name, s in seconds.items():
        total[name] = total.get(name, 0.0) + s


def _flatten(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{stage}.{k}": v for stage, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float))}


def _jsonable(obj: Any) -> Any:
    """Stage metrics as JSON-friendly values (tensors become floats or lists)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
