"""The in-process federated engine: one base model, per-client adapter state.

``Simulation.run_round`` is the round of DESIGN.md, top to bottom: plan, broadcast,
local training and client stages per sampled client, server stages, apply the step.
The engine knows no capability by name: at each step it calls the same hook on every
capability of the run (:mod:`fedlm.engine.capability`), in their order. Every random
choice is derived from (seed, round, client), so a run is reproducible and a resumed run
is identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import torch

from fedlm.aggregation.norm_guard import aggregate_is_finite
from fedlm.client.local import TrainOptions
from fedlm.client.local import train as train_with
from fedlm.client.trainer import LocalResult, steps_for
from fedlm.compression.stages import decode_broadcast, encode_broadcast
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData
from fedlm.engine import pipelines
from fedlm.engine.capability import Capability, LocalOutcome
from fedlm.engine.checkpoint import ServerState
from fedlm.engine.schedule import lr_at, step_lrs
from fedlm.errors import FedlmError, UpdateRejected
from fedlm.eval.metrics import LMScore, score_lm
from fedlm.models.adapters import AdaptedModel
from fedlm.seeds import derive_seed
from fedlm.stages import (
    ClientUpdate,
    CohortValue,
    GlobalAtStart,
    RoundPlan,
    TensorDict,
    contributors,
)

# Client-private state kept beside the client stages' states (never sent anywhere).
OPTIMIZER_KEY = "local_optimizer"

C = TypeVar("C", bound=Capability)


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


def planned_cohort_size(config: ExperimentConfig, num_clients: int) -> int:
    """``k``: ``clients_per_round``, or ``fraction * N`` rounded (at least 1, at most N)."""
    fed = config.federation
    k = fed.clients_per_round or max(1, round((fed.fraction or 0) * num_clients))
    return min(k, num_clients)


class Simulation:
    """Runs federated rounds in one process.

    Args:
        config: the experiment.
        model: the one base model with its trainable part.
        data: every client's examples.
        capabilities: the run's plug-ins in hook order (``fedlm.capabilities.build_engine``
            builds them from the config); none gives plain FedAvg.
    """

    def __init__(self, config: ExperimentConfig, model: AdaptedModel, data: FederatedData, *,
                 capabilities: Sequence[Capability] = ()) -> None:
        self.config = config
        self.model = model
        self.data = data
        self.client_ids = data.ids()
        self.capabilities = list(capabilities)
        self.client_pipeline = pipelines.client_pipeline(config, self.capabilities)
        self.server_pipeline = pipelines.server_pipeline(config, self.shared(model.shapes()), self.capabilities)
        self.down_codec = pipelines.download_codec(config)
        self.cohort_size = planned_cohort_size(config, len(self.client_ids))
        fed = config.federation
        n_eval = min(config.eval.max_clients or len(self.client_ids), len(self.client_ids))
        pick = np.random.default_rng(derive_seed(fed.seed, 7)).choice(len(self.client_ids), n_eval, replace=False)
        self.eval_ids = [self.client_ids[i] for i in sorted(pick)]

    def capability(self, kind: type[C]) -> C | None:
        """The run's capability of class ``kind``, or None when it is off."""
        return next((c for c in self.capabilities if isinstance(c, kind)), None)

    def shared(self, named: dict[str, Any]) -> dict[str, Any]:
        """What of a client's tensors (or their shapes) leaves it: every capability's ``shared``."""
        for cap in self.capabilities:
            named = cap.shared(named)
        return named

    # ------------------------------------------------------------------ state
    def init_state(self) -> ServerState:
        return ServerState(
            round=0,
            global_state=self.model.get_state(),
            server_states=self.server_pipeline.init(),
            totals={"bytes_up": 0, "bytes_down": 0},
        )

    def plan_round(self, r: int) -> RoundPlan:
        """Seeded cohort sampling without replacement (or a capability's cohort) and the round's lr."""
        fed = self.config.federation
        rng = np.random.default_rng(derive_seed(fed.seed, r))
        pick = rng.choice(len(self.client_ids), self.cohort_size, replace=False)
        cohort = tuple(self.client_ids[i] for i in sorted(pick))
        for cap in self.capabilities:
            cohort = cap.choose_cohort(rng, self.client_ids, cohort)
        steps = fed.local_steps or 0  # per-client when local_epochs is set (see train_options)
        return RoundPlan(round=r, cohort=cohort, lr=self.lr_at(r), local_steps=steps, seed=derive_seed(fed.seed, r, 1))

    def lr_at(self, r: int) -> float:
        """The client lr at the start of round ``r`` (1-based)."""
        return lr_at(self.config.federation, r)

    def step_lrs(self, r: int, steps: int) -> list[float] | None:
        """Each local step's lr in round ``r`` when the schedule counts steps; else None (the round's lr)."""
        return step_lrs(self.config.federation, r, steps)

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
        for cid in self.trainers(opened.plan):
            outcome = self.client_round(opened.plan, cid, opened.received, state.client_states.get(cid))
            outcomes.append(outcome)
            if on_client is not None and outcome.update is not None:
                on_client(cid)
        return self.finish_round(state, opened, outcomes, started=t_round)

    def trainers(self, plan: RoundPlan) -> list[str]:
        """The cohort members that train this round (a capability may have dropped some)."""
        return [cid for cid in plan.cohort if all(cap.will_train(plan, cid) for cap in self.capabilities)]

    def begin_round(self, state: ServerState) -> OpenRound:
        """Plan the next round and encode the broadcast (the global trainable tensors)."""
        for cap in self.capabilities:
            cap.adopt(state)
        plan = self.plan_round(state.round + 1).with_fields(
            GlobalAtStart(state.global_state, population=len(self.client_ids)))
        for cap in self.capabilities:
            plan = cap.extend_plan(plan, state)
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
        cstate = client_state or {**self.client_pipeline.init(), OPTIMIZER_KEY: {}}
        try:
            options = self.train_options(plan, cid, self.data.clients[cid].train, cstate)
        except UpdateRejected as exc:  # e.g. a straggler past its time budget sends nothing
            return ClientOutcome(cid, failure={"client_id": cid, "reason": exc.reason, "side": "client",
                                               "detail": exc.detail})
        t0 = time.perf_counter()
        update, result = self.local_update(plan, cid, received, options=options, client_state=cstate)
        train_seconds = time.perf_counter() - t0
        if fed.keep_optimizer_state:
            cstate = {**cstate, OPTIMIZER_KEY: result.optimizer_state}
        local = LocalOutcome(plan, cid, received, update, result, cstate)
        for cap in self.capabilities:  # what each keeps on the client (SCAFFOLD's c_i, personal tensors)
            local = replace(local, client_state=cap.after_local(local))
        metrics = {"train_loss": result.mean_loss, "steps": result.steps, **options.report}
        try:
            new_state, update, stage_metrics = self.client_pipeline.apply(local.client_state, update, plan)
        except UpdateRejected as exc:  # e.g. a diverged client cannot encode NaN: it sends nothing
            return ClientOutcome(cid, metrics=metrics, train_seconds=train_seconds, failure={
                "client_id": cid, "reason": exc.reason, "detail": exc.detail, "side": "client"})
        metrics.update(_flatten(stage_metrics))
        return ClientOutcome(cid, state=new_state, update=update, metrics=metrics, train_seconds=train_seconds,
                             stage_seconds=dict(self.client_pipeline.last_seconds))

    def train_options(self, plan: RoundPlan, cid: str, examples: list, client_state: dict) -> TrainOptions:
        """How ``cid`` trains this round: the federation's settings, then each capability's.

        Raises:
            UpdateRejected: a capability refused the client this round (it sends nothing).
        """
        fed = self.config.federation
        steps = steps_for(len(examples), batch_size=fed.batch_size, local_steps=fed.local_steps,
                          local_epochs=fed.local_epochs)
        options = TrainOptions(
            steps=steps, batch_size=fed.batch_size, lr=plan.lr, num_examples=len(examples),
            seed=derive_seed(plan.seed, self.client_index(cid)),
            weight_decay=fed.weight_decay, max_grad_norm=fed.max_grad_norm,
            optimizer_state=client_state.get(OPTIMIZER_KEY) if fed.keep_optimizer_state else None,
        )
        for cap in self.capabilities:
            options = cap.train_options(plan, cid, options, client_state)
        return replace(options, lr_steps=self.step_lrs(plan.round, options.steps))

    def client_index(self, cid: str) -> int:
        """A client's position among the sorted ids (its seed stream); past the end for the server."""
        return self.client_ids.index(cid) if cid in self.client_ids else len(self.client_ids)

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
        for cap in self.capabilities:  # values computed from the broadcast (e.g. a root update)
            plan = cap.before_intake(self, plan, received)
        value = CohortValue(updates=updates, rejected=client_failures)
        states, value, intake = self.server_pipeline.apply(
            state.server_states, value, plan, kinds=pipelines.INTAKE_KINDS
        )
        _add_seconds(stage_seconds, self.server_pipeline.last_seconds)
        notes = [n for cap in self.capabilities if (n := cap.after_intake(plan, state, value)) is not None]
        applied = contributors(value) >= fed.min_updates  # a secure sum counts its members
        combine: dict[str, Any] = {}
        new_global = state.global_state
        if applied:
            combined, value, combine = self.server_pipeline.apply(states, value, plan, kinds=pipelines.COMBINE_KINDS)
            _add_seconds(stage_seconds, self.server_pipeline.last_seconds)
            if aggregate_is_finite(value.aggregate):
                states, step = combined, value.aggregate or {}
                new_global = {k: v + step[k].to(v.dtype) if k in step else v  # tensors kept on clients: no step
                              for k, v in state.global_state.items()}
            else:  # never applied, and the combine stages' states stay as they were (no NaN momentum)
                applied, value.skipped = False, "non_finite_aggregate"
        elif fed.on_too_few_updates == "abort" and value.skipped is None:  # a deliberate skip is never fatal
            raise FedlmError(
                f"round {plan.round}: {len(value.updates)} valid update(s), fewer than federation.min_updates="
                f"{fed.min_updates}; rejected: {value.rejected}. Lower min_updates or set on_too_few_updates=skip"
            )
        server_seconds = time.perf_counter() - t0

        bytes_up = sum(len(u.payload or b"") for u in updates)
        extra_down = sum(cap.broadcast_bytes(state) for cap in self.capabilities)
        bytes_down = (len(down) + extra_down) * len(plan.cohort)
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
            "skipped": value.skipped,
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
        for note in notes:  # capability fields; their own seconds apart from the server stages'
            record["seconds"].update(note.seconds)
            record["seconds"]["server"] -= sum(note.seconds.values())
            record.update(note.record)
        new_state = ServerState(
            round=plan.round, global_state=new_global, server_states=states, client_states=client_states, totals=totals
        )
        for cap in self.capabilities:
            cap.adopt(new_state)
        return new_state, record

    def local_update(
        self,
        plan: RoundPlan,
        cid: str,
        received: TensorDict,
        *,
        options: TrainOptions | None = None,
        examples: list | None = None,
        client_state: dict | None = None,
    ) -> tuple[ClientUpdate, LocalResult]:
        """Local training of one client from the broadcast; returns its shared delta and result.

        ``examples`` trains on other examples than the client's own (the server's root data);
        ``options`` default to :meth:`train_options`.
        """
        train = examples if examples is not None else self.data.clients[cid].train
        cstate = client_state or {}
        if options is None:
            options = self.train_options(plan, cid, train, cstate)
        start = received
        for cap in self.capabilities:  # truncated to the client's rank, with its personal modules
            start = cap.client_start(plan, cid, start, cstate)
        self.model.set_state(start)
        metrics: dict[str, float] = {}
        for cap in self.capabilities:  # work on the start state (a loss to report, a personal head)
            metrics.update(cap.before_train(plan, cid, train, options))
        result = train_with(self.model, train, options)
        local = self.model.get_state()
        delta = self.shared({k: local[k] - received[k] for k in local})  # tensors kept on the client stay
        update = ClientUpdate(client_id=cid, round=plan.round, num_examples=len(train), tensors=delta,
                              metrics={"local_steps": result.steps, **metrics})  # FedNova, SCAFFOLD, q-FFL read it
        return update, result

    # ------------------------------------------------------------------ eval
    def evaluate_round(self, state: ServerState, client_ids: list[str] | None = None) -> dict[str, Any]:
        """The loop's evaluation: :meth:`evaluate` of the state's global tensors."""
        return self.evaluate(state.global_state, client_ids)

    def ask_clients(self, capability: str, state: ServerState, client_ids: list[str],
                    request: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each client's answer to a capability's ``client_query``, computed where its data is (here)."""
        cap = next((c for c in self.capabilities if c.name == capability), None)
        if cap is None:
            raise FedlmError(f"no capability {capability!r} in this run; it has {[c.name for c in self.capabilities]}")
        answers = {cid: cap.client_query(cid, state.global_state, state.client_states.get(cid), request)
                   for cid in client_ids}
        self.model.set_state(state.global_state)  # leave the one model as the global one
        return answers

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
