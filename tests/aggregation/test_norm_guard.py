"""NormGuard: hand-worked thresholds, the floor, non-finite norms, and the 1e30 update."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.norm_guard import (
    NormGuard,
    aggregate_is_finite,
    lower_median,
    non_finite_tensors,
    norm_threshold,
    update_norm,
)
from fedlm.aggregation.validate import Validate
from fedlm.errors import ConfigError
from fedlm.stages import SERVER_ORDER, ClientUpdate, CohortValue, Pipeline, RoundPlan, Stage

PLAN = RoundPlan(round=1, cohort=("a", "b", "c", "d", "e"), lr=0.1, local_steps=1, seed=0)


def with_norm(cid: str, norm: float) -> ClientUpdate:
    """An update whose L2 norm is ``norm``: [0.6, 0.8] * norm over two tensors (3-4-5)."""
    return ClientUpdate(cid, 1, 1, tensors={"w": torch.tensor([0.6 * norm]), "b": torch.tensor([0.8 * norm])})


def guard(norms: list[float], **kw: float) -> tuple[CohortValue, dict]:
    value = CohortValue([with_norm(cid, n) for cid, n in zip("abcde", norms)])
    stage = NormGuard(**kw)
    _, out, metrics = stage.apply(stage.init(), value, PLAN)
    return out, metrics


def test_hand_worked_one_blown_up_update() -> None:
    # norms [1, 2, 3, 1e30]: lower median 2, threshold 10 x 2 = 20; only 1e30 exceeds it
    out, metrics = guard([1.0, 2.0, 3.0, 1e30], factor=10)
    assert [u.client_id for u in out.updates] == ["a", "b", "c"]
    assert metrics["median"] == pytest.approx(2.0) and metrics["threshold"] == pytest.approx(20.0)
    assert metrics["rejected"] == ["d"]
    (r,) = out.rejected
    assert r["client_id"] == "d" and r["reason"] == "norm_outlier" and "threshold 20" in r["detail"]


@pytest.mark.parametrize(
    ("norms", "factor", "median", "threshold", "rejected"),
    [
        ([1.0, 1e30], 10, 1.0, 10.0, ["b"]),  # two updates: the lower median, not 5e29
        ([1.0, 2.0, 3.0, 4.0], 1, 2.0, 2.0, ["c", "d"]),  # factor 1: only the lower half stays
        ([5.0, 1.0, 50.0, 51.0, 2.0], 10, 5.0, 50.0, ["d"]),  # unsorted; exactly at the threshold stays
        ([3.0], 10, 3.0, 30.0, []),  # one update (or one secure sum) is never an outlier
        ([0.0, 0.0, 0.0], 10, 0.0, 1e-3, []),  # a silent round
    ],
)
def test_thresholds_by_hand(norms, factor, median, threshold, rejected) -> None:
    _, metrics = guard(norms, factor=factor)
    assert metrics["median"] == pytest.approx(median)
    assert metrics["threshold"] == pytest.approx(threshold)
    assert metrics["rejected"] == rejected


def test_the_floor_keeps_a_cohort_of_tiny_updates() -> None:
    # median 1e-6: 10 x median = 1e-5 would reject the honest 1e-4; the floor 1e-3 keeps it
    out, metrics = guard([1e-6, 1e-6, 1e-4])
    assert metrics["threshold"] == pytest.approx(1e-3) and out.rejected == []
    _, metrics = guard([1e-6, 1e-6, 1e-4], min_threshold=0.0)
    assert metrics["rejected"] == ["c"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_norms_are_always_rejected_and_left_out_of_the_median(bad: float) -> None:
    value = CohortValue([with_norm("a", 1.0), with_norm("b", 2.0), with_norm("c", 3.0)])
    value.updates.insert(1, ClientUpdate("x", 1, 1, tensors={"w": torch.tensor([bad]), "b": torch.tensor([0.0])}))
    _, out, metrics = NormGuard(factor=1e6).apply(None, value, PLAN)
    assert metrics["median"] == pytest.approx(2.0) and metrics["rejected"] == ["x"]
    assert out.rejected[0]["reason"] == "non_finite"


def test_all_non_finite_or_missing() -> None:
    value = CohortValue([
        ClientUpdate("a", 1, 1, tensors={"w": torch.tensor([math.nan])}),
        ClientUpdate("b", 1, 1, payload=b"not decoded"),
    ])
    _, out, metrics = NormGuard().apply(None, value, PLAN)
    assert out.updates == [] and metrics == {"median": None, "threshold": None, "rejected": ["a", "b"]}
    assert [r["reason"] for r in out.rejected] == ["non_finite", "missing"]
    _, empty, metrics = NormGuard().apply(None, CohortValue([]), PLAN)
    assert empty.updates == [] and metrics == {"median": None, "threshold": None, "rejected": []}


def test_the_guard_keeps_earlier_rejections_and_does_not_mutate_its_input() -> None:
    value = CohortValue([with_norm("a", 1.0), with_norm("b", 1e9)], rejected=[{"client_id": "z", "reason": "x"}])
    _, out, _ = NormGuard().apply(None, value, PLAN)
    assert [r["client_id"] for r in out.rejected] == ["z", "b"]
    assert len(value.updates) == 2 and len(value.rejected) == 1


def test_a_1e30_update_no_longer_ruins_the_default_mean() -> None:
    # The review's case: under the default config (no max_update_norm) one finite update of
    # norm 1e30 made the mean 2.5e29; with the guard the mean is the honest clients'.
    shapes = {"w": (1,), "b": (1,)}
    value = CohortValue([with_norm("a", 1.0), with_norm("b", 2.0), with_norm("c", 3.0), with_norm("d", 1e30)])
    pipeline = Pipeline([Validate(shapes), NormGuard(), WeightedMean()], order=SERVER_ORDER, side="server")
    _, out, metrics = pipeline.apply(pipeline.init(), value, PLAN)
    assert metrics["norm_guard"]["rejected"] == ["d"]
    assert out.aggregate["w"].item() == pytest.approx(0.6 * 2.0) and out.aggregate["b"].item() == pytest.approx(1.6)
    plain = Pipeline([Validate(shapes), WeightedMean()], order=SERVER_ORDER, side="server")
    _, ruined, _ = plain.apply(plain.init(), CohortValue(list(value.updates)), PLAN)
    assert ruined.aggregate["w"].item() > 1e29


def test_the_guard_is_a_stage_with_explicit_state() -> None:
    stage = NormGuard()
    assert isinstance(stage, Stage) and (stage.name, stage.kind) == ("norm_guard", "validate")
    assert stage.init() is None and (stage.factor, stage.min_threshold) == (10.0, 1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.factor = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw", [{"factor": 0.5}, {"factor": math.nan}, {"factor": math.inf}, {"factor": True}, {"factor": "10"},
           {"min_threshold": -1.0}, {"min_threshold": math.inf}]
)
def test_bad_parameters_are_config_errors(kw: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kw))):
        NormGuard(**kw)


def test_math_helpers_by_hand() -> None:
    assert lower_median([3.0, 1.0, 2.0, 4.0]) == 2.0 and lower_median([7.0]) == 7.0
    assert norm_threshold([1.0, 2.0, 3.0, 1e30], factor=10, min_threshold=0.0) == (2.0, 20.0)
    with pytest.raises(ConfigError):
        lower_median([])
    assert update_norm({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}) == 5.0
    assert update_norm({}) == 0.0
    assert update_norm({"a": torch.full((4,), 3e38)}) == pytest.approx(6e38)  # no float32 overflow
    assert math.isinf(update_norm({"a": torch.tensor([1.0, math.inf])}))


def test_aggregate_finiteness() -> None:
    ok = {"w": torch.ones(2), "b": torch.zeros(0)}
    assert aggregate_is_finite(ok) and aggregate_is_finite(None) and aggregate_is_finite({})
    bad = {**ok, "x": torch.tensor([1.0, math.nan]), "y": torch.tensor([-math.inf]), "z": torch.tensor([3e38])}
    assert not aggregate_is_finite(bad)
    assert non_finite_tensors(bad) == ["x", "y"]
