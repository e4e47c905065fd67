"""The one interface every capability implements, and the context it is built from.

A capability (differential privacy, secure aggregation, heterogeneity, personalisation,
contributions, the adversary, the audit trail, ...) is a plug-in to the one round of
:mod:`fedlm.engine.simulation` and the one loop of :mod:`fedlm.engine.loop`. It overrides
the hooks it needs; every hook has a no-op default, and the engine calls each hook on
every capability in the order of :data:`fedlm.capabilities.CAPABILITIES`. The engine never
names a capability.

Hooks, in the order a round meets them (docs/ARCHITECTURE.md has the table of who uses which):

=====================  ======  =============================================================
hook                   where   what it may do
=====================  ======  =============================================================
rows_hook (class)      data    rewrite rows before examples are built (poison, canaries)
build (class)          build   the capability for a run, or None when its config is off
client_stages          build   stages for the client pipeline (placed by kind)
server_stages          build   stages for the server pipeline (placed by kind)
server_intake          build   replace decode -> validate (the server sees no single update)
mean                   build   offer the server's aggregate stage, with a precedence
choose_cohort          server  replace the round's cohort (e.g. Poisson sampling)
extend_plan            server  add its typed fields to the round plan
broadcast_bytes        server  bytes it adds to each client's download
will_train             client  whether a cohort member trains at all this round
train_options          client  steps, batch size, objectives; may refuse (straggler)
client_start           client  the tensors local training starts from
before_train           client  work before the round's steps; metrics for the update
shared                 both    what of a client's tensors (or their shapes) leaves it
after_local            client  the client state it keeps for its next round
before_intake          server  typed plan fields computed from the broadcast (root update)
after_intake           server  a record fragment from the decoded, valid updates
adopt                  both    the engine now holds this state (new round, resume)
open_run               run     the run directory this run writes
resume                 loop    continue its own ledgers from a checkpoint
stop_reason            loop    why the next round must not run
after_round            loop    its part of the round record, state totals
initial_record         run     fields of the evaluation before training
summary                run     its keys of summary.json
save                   run     files beside the final adapter
client_query           client  an answer computed where a client's data is (end of run)
=====================  ======  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedlm.stages import ClientUpdate, CohortValue, PlanField, RoundPlan, Stage, TensorDict

if TYPE_CHECKING:
    import numpy as np

    from fedlm.client.local import TrainOptions
    from fedlm.client.trainer import LocalResult
    from fedlm.config.schema import ExperimentConfig
    from fedlm.data.federated import FederatedData, RowsHook
    from fedlm.engine.checkpoint import ServerState
    from fedlm.models.adapters import AdaptedModel


class MeanRank(IntEnum):
    """Precedence of the capabilities that offer the server's aggregate stage.

    Exactly one stage aggregates; the highest-ranked offer wins, and two offers of the same
    rank are an error (the config allowed two means that cannot both hold). The ranks say
    why one overrides another.
    """

    REFINEMENT = 10  # the same mean with more to log or a re-normalisation (LoRA-aware, FedNova)
    STRUCTURE = 20  # the updates carry only part of the model (personal modules): a plain mean
    OBJECTIVE = 25  # the aggregate serves another objective (q-FFL reweights by loss)
    DEFENCE = 30  # a robust aggregator: individual updates may be hostile
    GUARANTEE = 40  # a privacy guarantee bounds the mean's sensitivity (DP's bounded mean)
    VISIBILITY = 50  # the server sees only a sum (secure aggregation): no other mean can run


@dataclass(frozen=True)
class MeanOffer:
    """A capability's offer of the server's aggregate stage."""

    stage: Stage
    rank: MeanRank


@dataclass(frozen=True)
class RoundNote:
    """What ``after_intake`` adds to the round record: fields, and seconds kept apart from
    the server stages' time (they are subtracted from ``seconds.server``)."""

    record: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalOutcome:
    """One client's local training, as ``after_local`` sees it.

    Attributes:
        plan: the round plan.
        client_id: the client.
        received: the decoded broadcast (the global tensors it started from).
        update: the update about to enter the client pipeline (its shared delta).
        result: what the trainer reported.
        client_state: what the client keeps, so far.
    """

    plan: RoundPlan
    client_id: str
    received: TensorDict
    update: ClientUpdate
    result: LocalResult
    client_state: dict[str, Any]


@dataclass
class EngineContext:
    """What a capability is built from: the experiment, the one model and the data.

    In a deployment the server's data holds only each client's sizes, and a client's data
    only its own examples (:mod:`fedlm.deploy.parts`).
    """

    config: ExperimentConfig
    model: AdaptedModel
    data: FederatedData

    @property
    def client_ids(self) -> list[str]:
        return self.data.ids()

    def client_index(self, client_id: str) -> int:
        """A client's position among the sorted ids (its seed stream); past the end for the server."""
        ids = self.data.ids()
        return ids.index(client_id) if client_id in ids else len(ids)


@dataclass
class FinishedRun:
    """What the end-of-run hooks see.

    Attributes:
        state: the final state.
        records: every record of ``metrics.jsonl``.
        initial: the evaluation before training (with its capability fields).
        final: the final evaluation of the global model on the evaluation clients.
        driver: the run's round driver (``evaluate`` and ``ask_clients``).
        run_dir: the run directory.
    """

    state: ServerState
    records: list[dict[str, Any]]
    initial: dict[str, Any]
    final: dict[str, Any]
    driver: Any
    run_dir: Path


class Capability:
    """Base of every capability: each hook is a no-op until overridden.

    Class attributes:
        name: the capability's name (records, errors, ``ask_clients`` routing).
        plan_fields: the ``PlanField`` types it sets; a deployed client decodes the
            broadcast ones by these.
    """

    name: ClassVar[str] = "capability"
    plan_fields: ClassVar[tuple[type[PlanField], ...]] = ()

    @classmethod
    def build(cls, ctx: EngineContext) -> Capability | None:
        """The capability for this run, or None when the config leaves it off."""
        return None

    @classmethod
    def rows_hook(cls, config: ExperimentConfig) -> RowsHook | None:
        """Rewrite the raw rows by client before examples are built (before any model exists)."""
        return None

    # -- build (once) ------------------------------------------------------------------
    def client_stages(self) -> list[Stage]:
        return []

    def server_stages(self) -> list[Stage]:
        return []

    def server_intake(self) -> list[Stage] | None:
        """Stages that replace the default decode -> validate, or None to keep them."""
        return None

    def mean(self) -> MeanOffer | None:
        return None

    # -- plan (server, each round) -----------------------------------------------------
    def choose_cohort(self, rng: np.random.Generator, client_ids: list[str], cohort: tuple[str, ...]) -> tuple[str, ...]:
        return cohort

    def extend_plan(self, plan: RoundPlan, state: ServerState) -> RoundPlan:
        return plan

    def broadcast_bytes(self, state: ServerState) -> int:
        return 0

    # -- client (where its data is) ----------------------------------------------------
    def will_train(self, plan: RoundPlan, client_id: str) -> bool:
        return True

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        """The options of this client's local training; raise ``UpdateRejected`` to send nothing."""
        return options

    def client_start(self, plan: RoundPlan, client_id: str, start: TensorDict, client_state: dict[str, Any]) -> TensorDict:
        return start

    def before_train(self, plan: RoundPlan, client_id: str, examples: list, options: TrainOptions) -> dict[str, float]:
        """Work on the start state before the round's steps; returns metrics for the update."""
        return {}

    def shared(self, named: dict[str, Any]) -> dict[str, Any]:
        """What of a client's tensors (or of their shapes, by name) ever leaves the client."""
        return named

    def after_local(self, local: LocalOutcome) -> dict[str, Any]:
        """The client state to keep (``local.client_state`` unchanged by default)."""
        return local.client_state

    # -- server (each round) -----------------------------------------------------------
    def before_intake(self, engine: Any, plan: RoundPlan, received: TensorDict) -> RoundPlan:
        return plan

    def after_intake(self, plan: RoundPlan, state: ServerState, value: CohortValue) -> RoundNote | None:
        return None

    def adopt(self, state: ServerState) -> None:
        """The engine now holds ``state`` (a round began or ended, or a run resumed)."""

    # -- loop ---------------------------------------------------------------------------
    def open_run(self, run_dir: Path) -> None:
        """The run directory this run writes (for what a capability keeps beside the records)."""

    def resume(self, state: ServerState) -> None:
        """Continue this capability's ledgers from a checkpoint's ``state``."""

    def stop_reason(self, state: ServerState) -> str | None:
        return None

    def after_round(self, state: ServerState, record: dict[str, Any]) -> tuple[ServerState, dict[str, Any]]:
        return state, record

    # -- run ------------------------------------------------------------------------------
    def initial_record(self, state: ServerState) -> dict[str, Any]:
        """Fields of the evaluation record before training (e.g. an attack's success rate)."""
        return {}

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """Keys this capability adds to (or merges into) ``summary.json``."""
        return {}

    def save(self, directory: Path, state: ServerState) -> None:
        """Files next to the final adapter in ``directory``."""

    def client_query(self, client_id: str, global_state: TensorDict, client_state: dict[str, Any] | None,
                     request: dict[str, Any]) -> dict[str, Any]:
        """Answer ``request`` on the client's side (its data and state are here); JSON only."""
        return {}


class InjectedStages(Capability):
    """A user's (or a test's) own stages, placed by kind like any capability's.

    ``build_engine(config, model, data, extra=[InjectedStages(client=[MyStage()])])`` adds a
    stage without touching the engine or a capability.
    """

    name = "injected"

    def __init__(self, *, client: list[Stage] | tuple[Stage, ...] = (), server: list[Stage] | tuple[Stage, ...] = ()) -> None:
        self._client, self._server = list(client), list(server)

    def client_stages(self) -> list[Stage]:
        return list(self._client)

    def server_stages(self) -> list[Stage]:
        return list(self._server)


__all__ = [
    "Capability",
    "EngineContext",
    "FinishedRun",
    "InjectedStages",
    "LocalOutcome",
    "MeanOffer",
    "MeanRank",
    "RoundNote",
]
