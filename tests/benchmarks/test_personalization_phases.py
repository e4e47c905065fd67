"""``benchmarks.personalization.finished_phase``: a cut seed resumes at the phase it was in."""

import argparse

import numpy as np
import pytest
import torch

from benchmarks import personalization
from benchmarks._lm import Losses


def _args(**changes) -> argparse.Namespace:
    base = {"model": "smollm2-135m", "clients": 9, "lrs": [0.001, 0.003], "seeds": "0", "jobs": 1,
            "threads": 1, "no_record": False, "pool": False, "quick": False}
    return argparse.Namespace(**{**base, **changes})


@pytest.fixture
def phases(tmp_path, monkeypatch):
    monkeypatch.setattr(personalization, "PHASES", tmp_path / "phases")
    return tmp_path / "phases"


def _counting(result: dict):
    calls = []

    def compute() -> dict:
        calls.append(1)
        return result

    return compute, calls


def test_a_finished_phase_is_read_back_instead_of_recomputed(phases):
    losses = {"GARD": Losses(np.array([2.0, 3.0]), np.array([4, 6]))}
    result = {"state": {"w": torch.arange(3.0)}, "test": personalization._packed(losses), "val": {"GARD": 0.5}}
    compute, calls = _counting(result)
    first = personalization.finished_phase(_args(), 0, "fedavg_global", compute)
    again = personalization.finished_phase(_args(threads=2, seeds="0,1"), 0, "fedavg_global", compute)
    assert len(calls) == 1  # threads and the seed list are not part of the design
    assert torch.equal(again["state"]["w"], torch.arange(3.0)) and again["val"] == {"GARD": 0.5}
    back = personalization._unpacked(again["test"])["GARD"]
    assert back.mean_loss == pytest.approx((2.0 + 3.0) / (4 + 6))
    assert first is result  # the first run returns what it computed
    assert np.array_equal(back.nll, [2.0, 3.0]) and np.array_equal(back.tokens, [4, 6])
    assert not list(phases.glob("*.partial"))


def test_another_seed_phase_or_setting_is_computed_afresh(phases):
    compute, calls = _counting({"val": {"a": 1.0}})
    personalization.finished_phase(_args(), 0, "finetune", compute)
    personalization.finished_phase(_args(), 1, "finetune", compute)
    personalization.finished_phase(_args(), 0, "local_only", compute)
    personalization.finished_phase(_args(clients=3), 0, "finetune", compute)
    personalization.finished_phase(_args(medquad="other.jsonl"), 0, "finetune", compute)
    assert len(calls) == 5


@pytest.mark.parametrize("flag", ["quick", "no_record"])
def test_quick_and_unrecorded_runs_keep_nothing(phases, flag):
    compute, calls = _counting({"val": {"a": 1.0}})
    for _ in range(2):
        personalization.finished_phase(_args(**{flag: True}), 0, "finetune", compute)
    assert len(calls) == 2 and not phases.exists()


def test_a_phase_keeps_its_result_when_only_a_setting_it_never_reads_changes(phases):
    compute, calls = _counting({"val": {"a": 1.0}})
    for phase in ("fedavg_global", "local_only", "finetune"):
        personalization.finished_phase(_args(steps_grid=[4, 8, 12]), 0, phase, compute)
    assert len(calls) == 3
    # A wider fine-tuning grid reruns fine-tuning only; a new lr grid reruns the two tuned phases.
    for phase in ("fedavg_global", "local_only", "finetune"):
        personalization.finished_phase(_args(steps_grid=[4, 8, 12, 16]), 0, phase, compute)
    assert len(calls) == 4
    for phase in ("fedavg_global", "local_only", "finetune"):
        personalization.finished_phase(_args(steps_grid=[4, 8, 12, 16], lrs=[0.01]), 0, phase, compute)
    assert len(calls) == 6
