"""Robust aggregate stages: the shared stage contract, flagging, registry and config."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedlm.aggregation.robust_stages import (
    AGGREGATORS,
    FlameStage,
    FLTrustRoot,
    KrumStage,
    NormBoundStage,
    build_robust_stage,
)
from fedlm.config.robust import RobustConfig, needs_individual_updates
from fedlm.errors import ConfigError, PipelineError
from fedlm.stages import SERVER_ORDER, ClientUpdate, CohortValue, Pipeline, RoundPlan, Stage

DELTA = {
    "layer.lora_A": torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float32),
    "layer.lora_B": torch.tensor([1.0, 0.0, -3.0], dtype=torch.bfloat16),
}

# The config every registered aggregator is built from for the contract table: f = 1, and
# FLAME's noise off so equality can be exact.
CONTRACT = RobustConfig(num_byzantine=1, trim_fraction=0.2, flame_noise_lambda=0.0)


def plan(root: dict[str, torch.Tensor] | None = None) -> RoundPlan:
    base = RoundPlan(round=1, cohort=(), lr=0.1, local_steps=1, seed=7)
    return base.with_fields(FLTrustRoot(root)) if root is not None else base


def cohort(deltas: list[dict[str, torch.Tensor]]) -> CohortValue:
    return CohortValue(
        updates=[
            ClientUpdate(client_id=f"c{i}", round=1, num_examples=10 + i, tensors=d)
            for i, d in enumerate(deltas)
        ]
    )


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_stage_contract(name: str) -> None:
    stage = build_robust_stage(CONTRACT.model_copy(update={"aggregator": name}))
    assert isinstance(stage, Stage)
    assert stage.kind == "aggregate" and stage.name == name
    Pipeline([stage], order=SERVER_ORDER, side="server")  # kind is valid on the server
    state = stage.init()
    value = cohort([{k: v.clone() for k, v in DELTA.items()} for _ in range(7)])
    new_state, out, metrics = stage.apply(state, value, plan(root=DELTA))
    assert isinstance(out, CohortValue) and isinstance(metrics, dict)
    assert value.aggregate is None  # the input value is not mutated
    assert out.updates is value.updates
    assert list(out.aggregate) == list(DELTA)
    for key, ref in DELTA.items():
        got = out.aggregate[key]
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert torch.allclose(got.float(), ref.float(), atol=1e-6)  # identical honest updates
    # Selection rules exclude a fixed number even among equals (Krum keeps 1 of 7,
    # multi-Krum n - f, Bulyan n - 2f); every other rule flags nobody here.
    excluded = {"krum": 6, "multi_krum": 1, "bulyan": 2}.get(name, 0)
    assert len(metrics["flagged"]) == metrics["num_flagged"] == excluded
    assert metrics["num_updates"] == 7
    assert set(new_state) == {"flag_counts"}
    torch.save(new_state, "/dev/null")  # state is checkpointable


def attacked_cohort() -> CohortValue:
    gen = torch.Generator().manual_seed(1)
    honest = [{"w": torch.ones(5) + 0.05 * torch.randn(5, generator=gen)} for _ in range(8)]
    # Opposite to the honest direction, and at cosine 0.2 to it (distance 0.8).
    attack = [{"w": torch.full((5,), -40.0)}, {"w": 60.0 * torch.tensor([1, -1, 1, -1, 1.0])}]
    return cohort(honest + attack)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("multi_krum", {"f": 2}),
        ("bulyan", {"f": 1}),
        ("flame", {"f": 2, "noise_lambda": 0.0}),
    ],
)
def test_stages_flag_attacker_ids(name: str, kwargs: dict[str, Any]) -> None:
    value = attacked_cohort()
    if name == "bulyan":  # n >= 4f + 3 with f = 1 needs 7; drop one honest, keep one attacker
        value = CohortValue(updates=value.updates[:6] + value.updates[8:9])
    stage = AGGREGATORS.create(name, **kwargs)
    _, out, metrics = stage.apply(stage.init(), value, plan())
    attackers = {u.client_id for u in value.updates if abs(u.tensors["w"][0].item()) > 10}
    if name == "bulyan":  # Bulyan always leaves out 2f updates: the attacker and one more
        assert attackers < set(metrics["flagged"]) and metrics["num_flagged"] == 2
    elif name == "flame":
        # FLAME keeps HDBSCAN's cluster: the first 6 of 10 that single linkage joins. Two
        # honest updates join only later, over longer links, and are HDBSCAN's noise too
        # (sklearn's HDBSCAN flags the same four: c4, c5, c8, c9).
        assert attackers <= set(metrics["flagged"]) and metrics["num_flagged"] <= 10 - 6
    else:
        assert attackers == set(metrics["flagged"])
    assert torch.allclose(out.aggregate["w"], torch.ones(5), atol=0.1)


def test_flag_counts_accumulate_across_rounds() -> None:
    stage = KrumStage(f=2)
    state = stage.init()
    for _ in range(2):
        state, _, metrics = stage.apply(state, attacked_cohort(), plan())
    assert "c8" in metrics["flagged"] and "c9" in metrics["flagged"]
    assert state["flag_counts"]["c8"] == 2 and state["flag_counts"]["c9"] == 2
    assert isinstance(metrics["scores"], dict) and set(metrics["scores"]) == {
        f"c{i}" for i in range(10)
    }


def test_empty_cohort_leaves_aggregate_unset() -> None:
    stage = KrumStage(f=1)
    _, out, metrics = stage.apply(stage.init(), CohortValue(updates=[]), plan())
    assert out.aggregate is None and metrics["num_updates"] == 0


def test_undecoded_updates_are_a_pipeline_error() -> None:
    value = CohortValue(updates=[ClientUpdate("c0", 1, 5, tensors=None, payload=b"x")])
    with pytest.raises(PipelineError, match="decode stage"):
        NormBoundStage().apply({"flag_counts": {}}, value, plan())


def test_fltrust_without_root_update_is_a_pipeline_error() -> None:
    stage = AGGREGATORS.create("fltrust")
    with pytest.raises(PipelineError, match="FLTrustRoot"):
        stage.apply(stage.init(), cohort([DELTA, DELTA]), plan())


def test_too_few_updates_for_f_is_a_config_error() -> None:
    stage = KrumStage(f=2)
    with pytest.raises(ConfigError, match=r"krum needs n >= 2f\+3: got n=5, f=2"):
        stage.apply(stage.init(), cohort([DELTA] * 5), plan())


def test_flame_noise_is_reproducible_from_plan_seed() -> None:
    stage = FlameStage(noise_lambda=0.1)
    value = cohort([{"w": torch.ones(50)} for _ in range(3)])
    _, a, _ = stage.apply(stage.init(), value, plan())
    _, b, _ = stage.apply(stage.init(), value, plan())
    other = RoundPlan(round=2, cohort=(), lr=0.1, local_steps=1, seed=8)
    _, c, _ = stage.apply(stage.init(), value, other)
    assert torch.equal(a.aggregate["w"], b.aggregate["w"])
    assert not torch.equal(a.aggregate["w"], c.aggregate["w"])


def test_norm_bound_client_side() -> None:
    with pytest.raises(PipelineError, match="fixed bound"):
        NormBoundStage(client_side=True)
    stage = NormBoundStage(bound=1.0, client_side=True)
    assert not stage.needs_individual_updates and NormBoundStage().needs_individual_updates
    _, out, metrics = stage.apply(stage.init(), cohort([{"w": torch.tensor([3.0, 4.0])}]), plan())
    assert torch.equal(out.aggregate["w"], torch.tensor([3.0, 4.0]))  # not clipped on the server
    assert metrics["flagged"] == ["c0"]  # but over the bound the client should have enforced


def test_every_registered_aggregator_needs_individual_updates() -> None:
    assert all(needs_individual_updates(name) for name in AGGREGATORS.names())


@pytest.mark.parametrize("name", ["fedavg", *AGGREGATORS.names()])
def test_build_robust_stage_from_config(name: str) -> None:
    stage = build_robust_stage(RobustConfig(aggregator=name, num_byzantine=1, norm_bound=2.0))
    if name == "fedavg":
        assert stage is None
    else:
        assert stage is not None and stage.name == name
        if hasattr(stage, "f"):
            assert stage.f == 1
    if name == "norm_bound":
        assert stage.bound == 2.0
