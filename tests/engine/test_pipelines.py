"""Pipelines: stages placed by kind, one mean chosen by rank, the order checked once, state threaded."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from tests_support import tiny_overrides

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.config import load_config
from fedlm.engine import pipelines
from fedlm.engine.capability import Capability, MeanOffer, MeanRank
from fedlm.errors import PipelineError
from fedlm.stages import CLIENT_ORDER, SERVER_ORDER, ClientUpdate, CohortValue, Pipeline, RoundPlan


class Counter:
    """A stage that counts its calls in its state and tags the value's metrics."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def init(self) -> int:
        return 0

    def apply(self, state: int, value: Any, plan: RoundPlan) -> tuple[int, Any, dict[str, Any]]:
        if isinstance(value, ClientUpdate):
            value.metrics.setdefault("seen", []).append(self.name)
        return state + 1, value, {"calls": state + 1}


class Offers(Capability):
    """A capability that adds stages and offers a mean or an intake."""

    name: ClassVar[str] = "offers"

    def __init__(self, *, client=(), server=(), mean=None, intake=None, label="offers") -> None:
        self._client, self._server, self._mean, self._intake = list(client), list(server), mean, intake
        self.name = label

    def client_stages(self):
        return list(self._client)

    def server_stages(self):
        return list(self._server)

    def mean(self):
        return self._mean

    def server_intake(self):
        return self._intake


@pytest.fixture
def config(lm_data):
    return load_config(None, tiny_overrides(lm_data))


def _plan() -> RoundPlan:
    return RoundPlan(round=1, cohort=("a",), lr=0.1, local_steps=1, seed=0)


def test_added_stages_land_by_kind_core_first_then_capability_order(config) -> None:
    caps = [Offers(client=[Counter("late_clip", "clip"), Counter("mask", "mask")], label="one"),
            Offers(client=[Counter("poison", "transform"), Counter("early_clip", "clip")], label="two")]
    names = [s.name for s in pipelines.client_pipeline(config, caps).stages]
    assert names == ["poison", "late_clip", "early_clip", "encode", "mask"]


def test_server_core_is_decode_validate_mean_optimize(config) -> None:
    names = [s.name for s in pipelines.server_pipeline(config, {"w": (2,)}, []).stages]
    assert names[:2] == ["decode", "validate"] and names[-1] == "server_opt"
    assert pipelines.choose_mean(config, []).rank == MeanRank.REFINEMENT  # FedAvg's weighted mean


def test_the_highest_ranked_mean_wins_and_a_tie_is_an_error(config) -> None:
    low, high = WeightedMean(), Counter("dp_like_mean", "aggregate")
    caps = [Offers(mean=MeanOffer(low, MeanRank.STRUCTURE), label="a"),
            Offers(mean=MeanOffer(high, MeanRank.GUARANTEE), label="b")]
    assert pipelines.choose_mean(config, caps).stage is high
    tie = [Offers(mean=MeanOffer(low, MeanRank.DEFENCE), label="a"), Offers(mean=MeanOffer(high, MeanRank.DEFENCE), label="b")]
    with pytest.raises(PipelineError, match=r"\['a', 'b'\].*DEFENCE"):
        pipelines.choose_mean(config, tie)


def test_one_capability_may_replace_the_intake(config) -> None:
    intake = [Counter("unmask", "unmask"), Counter("sum_validate", "validate")]
    names = [s.name for s in pipelines.server_pipeline(config, {"w": (2,)}, [Offers(intake=intake)]).stages]
    assert names[:2] == ["unmask", "sum_validate"] and "decode" not in names
    with pytest.raises(PipelineError, match="replace the server's intake"):
        pipelines.server_pipeline(config, {"w": (2,)}, [Offers(intake=intake, label="a"), Offers(intake=intake, label="b")])


def test_an_unknown_kind_is_refused_when_built(config) -> None:
    with pytest.raises(PipelineError, match="kind 'teleport'"):
        pipelines.client_pipeline(config, [Offers(client=[Counter("x", "teleport")])])


def test_pipeline_checks_the_order_once_when_built() -> None:
    with pytest.raises(PipelineError, match="clip -> noise -> encode"):
        Pipeline([Counter("e", "encode"), Counter("c", "clip")], order=CLIENT_ORDER, side="client")
    with pytest.raises(PipelineError, match="duplicate stage names"):
        Pipeline([Counter("c", "clip"), Counter("c", "clip")], order=CLIENT_ORDER, side="client")


def test_state_threads_through_apply_and_unrun_kinds_keep_theirs() -> None:
    pipe = Pipeline([Counter("d", "decode"), Counter("m", "aggregate"), Counter("o", "optimize")],
                    order=SERVER_ORDER, side="server")
    states = pipe.init()
    assert states == {"d": 0, "m": 0, "o": 0}
    value = CohortValue(updates=[])
    states, _, metrics = pipe.apply(states, value, _plan(), kinds=("decode",))
    assert states == {"d": 1, "m": 0, "o": 0} and metrics == {"d": {"calls": 1}}  # nested under the stage name
    states, _, _ = pipe.apply(states, value, _plan())
    assert states == {"d": 2, "m": 1, "o": 1}
    assert set(pipe.last_seconds) == {"d", "m", "o"}


def test_client_stages_run_in_order() -> None:
    pipe = Pipeline([Counter("t", "transform"), Counter("c", "clip"), Counter("n", "noise")], order=CLIENT_ORDER,
                    side="client")
    update = ClientUpdate("a", 1, 3, tensors={"w": torch.zeros(2)})
    _, out, _ = pipe.apply(pipe.init(), update, _plan())
    assert out.metrics["seen"] == ["t", "c", "n"]
