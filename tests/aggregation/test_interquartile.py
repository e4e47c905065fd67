"""The interquartile mean, worked by hand."""

from __future__ import annotations

import pytest
import torch

from fedlm.aggregation.interquartile import InterquartileMeanStage, interquartile_mean
from fedlm.aggregation.robust_stages import build_robust_stage
from fedlm.config.robust import RobustConfig
from fedlm.errors import ConfigError
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan


def test_eight_updates_drop_two_at_each_end_of_every_coordinate() -> None:
    # Coordinate 0: 1..8 -> drop 1, 2 and 7, 8 -> mean(3, 4, 5, 6) = 4.5.
    # Coordinate 1: an attacker's 1000 and -1000 are the extremes; the middle is 0, 1, 2, 3 -> 1.5.
    col1 = [1000.0, -1000.0, 0.0, 1.0, 2.0, 3.0, -5.0, 9.0]
    updates = [{"w": torch.tensor([float(i + 1), col1[i]])} for i in range(8)]
    agg, diag = interquartile_mean(updates)
    assert torch.allclose(agg["w"], torch.tensor([4.5, 1.5]))
    assert diag["trimmed_per_side"] == 2 and diag["flagged"] == []


def test_fewer_than_four_updates_trim_nothing() -> None:
    agg, diag = interquartile_mean([{"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([6.0])}])
    assert diag["trimmed_per_side"] == 0 and torch.allclose(agg["w"], torch.tensor([3.0]))


def test_it_is_a_registered_stage_with_its_assumption() -> None:
    stage = build_robust_stage(RobustConfig(aggregator="interquartile_mean", num_byzantine=1))
    assert isinstance(stage, InterquartileMeanStage)
    value = CohortValue(updates=[ClientUpdate(f"c{i}", 1, 5, tensors={"w": torch.tensor([float(i)])}) for i in range(5)])
    _, out, metrics = stage.apply(stage.init(), value, RoundPlan(1, (), 0.1, 1, 0))
    assert torch.allclose(out.aggregate["w"], torch.tensor([2.0]))  # drop 0 and 4: mean(1, 2, 3)
    assert metrics["num_updates"] == 5
    RobustConfig(aggregator="interquartile_mean", num_byzantine=1).check_cohort(5)  # n = 4f + 1
    with pytest.raises(ConfigError, match=r"n >= 4f\+1"):
        RobustConfig(aggregator="interquartile_mean", num_byzantine=1).check_cohort(4)
