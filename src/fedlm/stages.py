"""Stages: small objects with one job, explicit state and a checked order.

A stage follows the shape of TensorFlow Federated's aggregation processes::

    state = stage.init()
    state, value, metrics = stage.apply(state, value, plan)

State is returned, never hidden in attributes, so a checkpoint is the list of stage
states and resume is exact. A pipeline is a list of stages in execution order; it is
checked once, when built, against the canonical order of stage kinds below, and its
metrics nest under each stage's name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch

from fedlm.errors import PipelineError

TensorDict = dict[str, torch.Tensor]

# Canonical orders (DESIGN.md). A stage's `kind` must appear here; a pipeline's kinds
# must be non-decreasing in this order.
CLIENT_ORDER: tuple[str, ...] = ("transform", "clip", "noise", "encode", "mask")
SERVER_ORDER: tuple[str, ...] = ("unmask", "decode", "validate", "aggregate", "noise", "optimize")


class PlanField:
    """Base of the typed values a capability adds to a round plan.

    A subclass is a frozen dataclass whose fields are numbers, strings, booleans or
    ``TensorDict``s (what the deployment wire can carry), or, for values that never leave
    the server, anything. ``broadcast`` says whether clients receive it: a deployed round
    sends exactly the broadcast fields to each client. A plan holds at most one value of
    each type, and stages look it up by type (``plan.get(DpRound)``), never by a string.
    """

    broadcast: ClassVar[bool] = True


F = TypeVar("F", bound=PlanField)


@dataclass(frozen=True)
class RoundPlan:
    """What the server decides for one round; travels to every sampled client.

    Attributes:
        round: 1-based round number.
        cohort: client ids sampled for this round, in a fixed order.
        lr: client learning rate for this round (after the schedule).
        local_steps: optimiser steps each client runs.
        seed: per-round seed; clients derive theirs from it and their id.
        fields: typed values capabilities add (see ``PlanField``), by their type.
    """

    round: int
    cohort: tuple[str, ...]
    lr: float
    local_steps: int
    seed: int
    fields: Mapping[type[PlanField], PlanField] = field(default_factory=dict)

    def get(self, kind: type[F]) -> F | None:
        """The plan's value of type ``kind``, or None when no capability set one."""
        return self.fields.get(kind)  # type: ignore[return-value]

    def require(self, kind: type[F], *, by: str) -> F:
        """The plan's value of type ``kind``; a ``PipelineError`` naming ``by`` when absent."""
        found = self.fields.get(kind)
        if found is None:
            raise PipelineError(
                f"{by} needs the round plan's {kind.__name__}; enable the capability that sets it "
                "or build the plan with plan.with_fields(...)"
            )
        return found  # type: ignore[return-value]

    def with_fields(self, *values: PlanField) -> RoundPlan:
        """A copy with ``values`` set (replacing any value of the same type)."""
        return replace(self, fields={**self.fields, **{type(v): v for v in values}})

    def without(self, *kinds: type[PlanField]) -> RoundPlan:
        """A copy without the values of ``kinds``."""
        return replace(self, fields={k: v for k, v in self.fields.items() if k not in kinds})


@dataclass(frozen=True)
class GlobalAtStart(PlanField):
    """The global trainable tensors the round starts from, and the federation's size.

    Set by the engine on every plan for server stages that rebuild client models (the
    LoRA-aware mean) or scale by the population (SCAFFOLD's ``1/N``). Clients have the
    broadcast itself, so it is not sent to them.
    """

    broadcast: ClassVar[bool] = False
    tensors: TensorDict
    population: int


@dataclass
class ClientUpdate:
    """One client's contribution to a round.

    ``tensors`` holds the delta (local - global) by parameter name until an encode
    stage turns it into ``payload`` bytes, the exact bytes that would cross the wire.
    """

    client_id: str
    round: int
    num_examples: int
    tensors: TensorDict | None = None
    payload: bytes | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CohortValue:
    """What flows through the server pipeline in one round.

    Decode/validate stages work on ``updates``; the aggregate stage fills
    ``aggregate`` (a delta by parameter name) and later stages refine it.
    """

    updates: list[ClientUpdate]
    aggregate: TensorDict | None = None
    rejected: list[dict[str, str]] = field(default_factory=list)
    skipped: str | None = None  # a stage gave up on the round on purpose (e.g. a SecAgg+ abort): skip, never fail


# Update metric: how many clients one update stands for (a secure sum stands for its
# survivors); an update without it stands for one.
CONTRIBUTORS_METRIC = "contributors"


def contributors(value: CohortValue) -> int:
    """Clients behind the cohort's valid updates."""
    return sum(int(u.metrics.get(CONTRIBUTORS_METRIC, 1)) for u in value.updates)


@runtime_checkable
class Stage(Protocol):
    """The contract every client and server stage meets."""

    name: ClassVar[str]
    kind: ClassVar[str]

    def init(self) -> Any:
        """Return the initial state (anything torch.save can store)."""
        ...

    def apply(self, state: Any, value: Any, plan: RoundPlan) -> tuple[Any, Any, dict[str, Any]]:
        """Process one value; return (new state, new value, metrics)."""
        ...


class Pipeline:
    """Stages in execution order, checked once when built.

    Args:
        stages: the stages, first to run first.
        order: the canonical order of stage kinds for this side.
        side: "client" or "server", used in error messages.
    """

    def __init__(self, stages: Sequence[Stage], *, order: Sequence[str], side: str) -> None:
        self.stages = list(stages)
        self.side = side
        self.last_seconds: dict[str, float] = {}  # stage name -> wall seconds of the last apply
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise PipelineError(f"{side} pipeline has duplicate stage names {names}; give each stage a unique name")
        last = -1
        for stage in self.stages:
            if stage.kind not in order:
                raise PipelineError(
                    f"{side} stage {stage.name!r} has kind {stage.kind!r}; allowed kinds in order: {list(order)}"
                )
            pos = order.index(stage.kind)
            if pos < last:
                raise PipelineError(
                    f"{side} stage {stage.name!r} ({stage.kind}) runs after a later kind; "
                    f"{side} stages must follow the order {' -> '.join(order)}"
                )
            last = pos

    def init(self) -> dict[str, Any]:
        """Initial states of all stages, keyed by stage name."""
        return {s.name: s.init() for s in self.stages}

    def apply(
        self, states: dict[str, Any], value: Any, plan: RoundPlan, *, kinds: Sequence[str] | None = None
    ) -> tuple[dict[str, Any], Any, dict[str, dict[str, Any]]]:
        """Run the stages in order (only those of ``kinds`` if given).

        Returns the updated states (stages not run keep theirs), the value, and the
        metrics nested under each stage's name. Wall seconds per stage of this call are
        left in ``last_seconds``: timings are kept apart from the metrics, which must be
        reproducible from the seed.
        """
        new_states = dict(states)
        metrics: dict[str, dict[str, Any]] = {}
        self.last_seconds = {}
        for stage in self.stages:
            if kinds is not None and stage.kind not in kinds:
                continue
            t0 = time.perf_counter()
            new_states[stage.name], value, metrics[stage.name] = stage.apply(states[stage.name], value, plan)
            self.last_seconds[stage.name] = time.perf_counter() - t0
        return new_states, value, metrics

    def kinds(self) -> list[str]:
        return [s.kind for s in self.stages]
