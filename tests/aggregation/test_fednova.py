"""FedNova (Wang et al. 2020): normalised averaging by local steps, by hand."""

from __future__ import annotations

import pytest
import torch

from fedlm.aggregation.fedavg import weighted_mean
from fedlm.aggregation.fednova import FedNovaMean, fednova_mean
from fedlm.errors import ProtocolError
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

PLAN = RoundPlan(round=1, cohort=("a", "b"), lr=0.1, local_steps=3, seed=0)


def test_normalised_mean_by_hand():
    # d = [2/2, 3/1] = [1, 3]; p = [1/2, 1/2]; tau_eff = 1.5; Δ = 1.5 * 2 = 3 (FedAvg: 2.5)
    agg, tau = fednova_mean([{"w": torch.tensor([2.0])}, {"w": torch.tensor([3.0])}], [1.0, 1.0], [2, 1])
    assert tau == 1.5
    torch.testing.assert_close(agg["w"], torch.tensor([3.0]))


def test_equal_steps_is_fedavg():
    deltas = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([4.0, 0.5])}]
    agg, _ = fednova_mean(deltas, [1.0, 3.0], [5, 5])
    torch.testing.assert_close(agg["w"], weighted_mean(deltas, [1.0, 3.0])["w"])


def test_stage_reads_local_steps_from_update_metrics():
    ups = [ClientUpdate("a", 1, 1, tensors={"w": torch.tensor([2.0])}, metrics={"local_steps": 2}),
           ClientUpdate("b", 1, 3, tensors={"w": torch.tensor([1.0])})]  # no metric: the plan's 3 steps
    _, value, metrics = FedNovaMean().apply(None, CohortValue(updates=ups), PLAN)
    # p = [1/4, 3/4]; d = [1, 1/3]; tau_eff = 0.5 + 2.25 = 2.75; Δ = 2.75 * (0.25 + 0.25) = 1.375
    torch.testing.assert_close(value.aggregate["w"], torch.tensor([1.375]))
    assert metrics["tau_eff"] == pytest.approx(2.75)


def test_zero_steps_is_a_protocol_error():
    ups = [ClientUpdate("a", 1, 1, tensors={"w": torch.tensor([2.0])}, metrics={"local_steps": 0})]
    with pytest.raises(ProtocolError, match="local steps"):
        FedNovaMean().apply(None, CohortValue(updates=ups), PLAN)
