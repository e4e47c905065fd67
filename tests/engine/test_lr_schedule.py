"""The client learning-rate schedule: by round, or by local step across rounds."""

from __future__ import annotations

import math

import pytest
from tests_support import tiny_overrides

from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.engine.simulation import Simulation
from fedlm.errors import ConfigError


def simulation(lm_data, **extra) -> Simulation:
    config = load_config(None, tiny_overrides(lm_data, **{"federation.lr": 0.1, "federation.min_lr_ratio": 0.1, **extra}))
    model, data = prepare(config)
    return build_engine(config, model, data)


def test_cosine_by_round_runs_from_lr_to_its_floor(lm_data):
    sim = simulation(lm_data, **{"federation.lr_schedule": "cosine", "federation.rounds": 5})
    lrs = [sim.lr_at(r) for r in range(1, 6)]
    # 0.01 + 0.09 * (1 + cos(pi * (r - 1) / 4)) / 2
    expected = [0.01 + 0.045 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.055)
    assert sim.step_lrs(2, 3) is None  # every step of a round takes the round's lr


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_step_schedule_gives_the_same_lr_at_the_same_inner_step_for_any_round_length(lm_data, schedule):
    # H = 1 for 12 rounds and H = 4 for 3 rounds: 12 inner steps either way.
    sync = simulation(lm_data, **{"federation.lr_schedule": schedule, "federation.lr_schedule_unit": "step",
                                  "federation.rounds": 12, "federation.local_steps": 1})
    local = simulation(lm_data, **{"federation.lr_schedule": schedule, "federation.lr_schedule_unit": "step",
                                   "federation.rounds": 3, "federation.local_steps": 4})
    by_step = [lr for r in range(1, 4) for lr in local.step_lrs(r, 4)]
    assert by_step == pytest.approx([sync.lr_at(r) for r in range(1, 13)])
    assert by_step[0] == pytest.approx(0.1) and by_step[-1] == pytest.approx(0.01)
    assert [local.lr_at(r) for r in range(1, 4)] == pytest.approx(by_step[::4])  # the round's first step
    # an attacker training past the last step stays at the floor
    assert local.step_lrs(3, 6)[-2:] == pytest.approx([0.01, 0.01])


def test_every_client_trains_with_its_rounds_step_lrs(lm_data, monkeypatch):
    import fedlm.client.local as simulation_module

    seen: list[list[float]] = []
    real = simulation_module.train_local

    def recording(*args, lr_steps=None, **kwargs):
        seen.append(list(lr_steps))
        return real(*args, lr_steps=lr_steps, **kwargs)

    monkeypatch.setattr(simulation_module, "train_local", recording)
    sim = simulation(lm_data, **{"federation.lr_schedule": "cosine", "federation.lr_schedule_unit": "step"})
    state = sim.init_state()
    for _ in range(2):
        state, record = sim.run_round(state)
    # 2 rounds x 2 local steps: cosine over 4 steps, 3 clients a round
    inner = [0.01 + 0.045 * (1 + math.cos(math.pi * t / 3)) for t in range(4)]
    flat = [lr for lrs in seen for lr in lrs]
    assert flat == pytest.approx(inner[:2] * 3 + inner[2:] * 3)
    assert record["lr"] == pytest.approx(inner[2])


def test_a_step_schedule_needs_local_steps(lm_data):
    with pytest.raises(ConfigError, match="lr_schedule_unit"):
        load_config(None, tiny_overrides(lm_data, **{"federation.lr_schedule_unit": "step",
                                                     "federation.local_steps": "null", "federation.local_epochs": 1}))


def test_scaffold_refuses_an_lr_that_changes_within_a_round(lm_data):
    with pytest.raises(ConfigError, match="scaffold"):
        load_config(None, tiny_overrides(lm_data, **{"local.algorithm": "scaffold", "federation.lr_schedule": "cosine",
                                                     "federation.lr_schedule_unit": "step"}))
    load_config(None, tiny_overrides(lm_data, **{"local.algorithm": "scaffold", "federation.lr_schedule_unit": "step"}))


def test_warmup_rises_linearly_then_the_cosine_decays_over_the_rest(lm_data):
    sim = simulation(lm_data, **{"federation.lr_schedule": "cosine", "federation.lr_schedule_unit": "step",
                                 "federation.rounds": 3, "federation.local_steps": 2, "federation.warmup": 2})
    by_step = [lr for r in range(1, 4) for lr in sim.step_lrs(r, 2)]
    # 0.1 x 1/2, 0.1 x 2/2, then 0.01 + 0.045 (1 + cos(pi t / 3)) over the 4 steps left
    assert by_step == pytest.approx([0.05, 0.1, 0.1, 0.0775, 0.0325, 0.01])


def test_warmup_with_a_constant_lr_by_round_and_by_step(lm_data):
    by_round = simulation(lm_data, **{"federation.rounds": 4, "federation.warmup": 2})
    assert [by_round.lr_at(r) for r in range(1, 5)] == pytest.approx([0.05, 0.1, 0.1, 0.1])
    assert by_round.step_lrs(1, 2) is None  # by round: every step takes the round's lr
    by_step = simulation(lm_data, **{"federation.rounds": 2, "federation.local_steps": 2, "federation.warmup": 3,
                                     "federation.lr_schedule_unit": "step"})
    assert by_step.step_lrs(1, 2) + by_step.step_lrs(2, 2) == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])


def test_warmup_must_leave_part_of_the_schedule_and_scaffold_refuses_it_by_step(lm_data):
    with pytest.raises(ConfigError, match=r"federation\.warmup=4 leaves no step.*below 4"):
        load_config(None, tiny_overrides(lm_data, **{"federation.warmup": 4, "federation.lr_schedule_unit": "step"}))
    with pytest.raises(ConfigError, match="scaffold"):
        load_config(None, tiny_overrides(lm_data, **{"local.algorithm": "scaffold", "federation.warmup": 1,
                                                     "federation.lr_schedule_unit": "step"}))
    load_config(None, tiny_overrides(lm_data, **{"local.algorithm": "scaffold", "federation.warmup": 1}))
