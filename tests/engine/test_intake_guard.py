"""One blown-up update cannot ruin the global model; a non-finite step is never applied."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from tests_support import tiny_overrides

from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.engine.capability import InjectedStages
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan


class BlowUp:
    """Client transform: one client multiplies its delta by 1e30 (a finite, ruinous update)."""

    name: ClassVar[str] = "blow_up"
    kind: ClassVar[str] = "transform"

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def init(self) -> None:
        return None

    def apply(self, state: None, value: ClientUpdate, plan: RoundPlan) -> tuple[None, ClientUpdate, dict[str, Any]]:
        if value.client_id != self.client_id:
            return state, value, {}
        return state, replace(value, tensors={k: t * 1e30 for k, t in value.tensors.items()}), {}


class PoisonStep:
    """Server noise stage that makes the step NaN (a bug, or a mechanism gone wrong)."""

    name: ClassVar[str] = "poison_step"
    kind: ClassVar[str] = "noise"

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        return state, replace(value, aggregate={k: torch.full_like(t, float("nan"))
                                                for k, t in (value.aggregate or {}).items()}), {}


def _sim(lm_data, extra, **overrides):
    config = load_config(None, tiny_overrides(lm_data, **{"federation.clients_per_round": 3, **overrides}))
    model, data = prepare(config)
    return build_engine(config, model, data, extra=extra)


def _largest(state) -> float:
    return max(float(t.abs().max()) for t in state.global_state.values())


def test_the_default_norm_guard_rejects_a_1e30_update_and_the_model_stays_sane(lm_data) -> None:
    sim = _sim(lm_data, [])
    victim = sim.plan_round(1).cohort[0]
    sim = _sim(lm_data, [InjectedStages(client=[BlowUp(victim)])])
    start = sim.init_state()
    state, record = sim.run_round(start)
    assert [(x["client_id"], x["reason"]) for x in record["rejected"]] == [(victim, "norm_outlier")]
    assert record["applied"] and _largest(state) < 10 * _largest(start) + 1.0


def test_without_the_guard_the_same_update_ruins_the_model(lm_data) -> None:
    sim = _sim(lm_data, [], **{"federation.norm_guard": "null"})
    victim = sim.plan_round(1).cohort[0]
    sim = _sim(lm_data, [InjectedStages(client=[BlowUp(victim)])], **{"federation.norm_guard": "null"})
    state, record = sim.run_round(sim.init_state())
    assert record["rejected"] == [] and _largest(state) > 1e20  # the threat the guard is for


def test_a_non_finite_step_is_skipped_logged_and_the_run_goes_on(lm_data) -> None:
    sim = _sim(lm_data, [InjectedStages(server=[PoisonStep()])])
    start = sim.init_state()
    state, record = sim.run_round(start)
    assert not record["applied"] and record["skipped"] == "non_finite_aggregate"
    assert all(torch.equal(state.global_state[k], start.global_state[k]) for k in start.global_state)
    assert state.server_states == start.server_states  # no NaN momentum kept either
    state, record = sim.run_round(state)
    assert state.round == 2  # the next round runs
