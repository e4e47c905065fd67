"""The LoRA aggregate stage: deltas in, exact or naive aggregate out, error logged."""

from __future__ import annotations

import pytest
import torch

from fedlm.aggregation.lora import lora_scaling
from fedlm.aggregation.lora_stage import LoraAggregateStage
from fedlm.client.profiles import rank_masks, truncate_to_rank
from fedlm.errors import ConfigError, PipelineError, UpdateRejected
from fedlm.stages import ClientUpdate, CohortValue, GlobalAtStart, RoundPlan

PREFIX = "base_model.model.model.layers.0.self_attn"
DIMS = {f"{PREFIX}.q_proj": (6, 5), f"{PREFIX}.v_proj": (4, 5)}
R = 4
S = lora_scaling(8.0, R)


def adapter(gen: torch.Generator, rank: int = R) -> dict[str, torch.Tensor]:
    state = {}
    for m, (out, inp) in DIMS.items():
        state[f"{m}.lora_A.weight"] = torch.randn(rank, inp, generator=gen)
        state[f"{m}.lora_B.weight"] = torch.randn(out, rank, generator=gen)
    return state


def round_value(glob, locals_, weights=(1, 2, 3)):
    ups = [ClientUpdate(f"c{i}", 1, w, tensors={k: loc[k] - glob[k] for k in glob}) for i, (loc, w) in enumerate(zip(locals_, weights, strict=True))]
    plan = RoundPlan(round=1, cohort=tuple(u.client_id for u in ups), lr=0.1, local_steps=1, seed=0).with_fields(GlobalAtStart(glob, population=len(ups)))
    return CohortValue(updates=ups), plan


def product(state, module):
    return S * state[f"{module}.lora_B.weight"].double() @ state[f"{module}.lora_A.weight"].double()


def target(locals_, weights, module):
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    return sum(wi * product(s, module) for wi, s in zip(w, locals_, strict=True))


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    return adapter(gen), [adapter(gen) for _ in range(3)]


def test_naive_is_the_mean_of_deltas_and_its_error_is_large(setup):
    glob, locals_ = setup
    value, plan = round_value(glob, locals_)
    _, out, metrics = LoraAggregateStage("naive", scaling=S, rank=R).apply({"residual": {}}, value, plan)
    for k in glob:
        expected = sum(w * (loc[k] - glob[k]) for w, loc in zip((1, 2, 3), locals_, strict=True)) / 6
        torch.testing.assert_close(out.aggregate[k], expected)
    assert metrics["max_error"] > 0.1 and set(metrics["error"]) == {"layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"}


def test_fedex_is_exact_and_accumulates_its_residual(setup):
    glob, locals_ = setup
    stage = LoraAggregateStage("fedex", scaling=S, rank=R)
    value, plan = round_value(glob, locals_)
    state, out, metrics = stage.apply(stage.init(), value, plan)
    assert metrics["max_error"] < 1e-5
    new = {k: glob[k] + out.aggregate[k] for k in glob}
    for m, (o, i) in DIMS.items():  # base + residual + s B A == mean of the clients' s B_i A_i
        applied = product(new, m) + state["residual"][m].double()
        torch.testing.assert_close(applied, target(locals_, [1, 2, 3], m), atol=1e-5, rtol=1e-5)
        assert state["residual"][m].shape == (o, i)
    assert metrics["residual_bytes"] == sum(o * i * 4 for o, i in DIMS.values())
    state2, _, _ = stage.apply(state, *round_value(glob, locals_))
    m = next(iter(DIMS))
    torch.testing.assert_close(state2["residual"][m], 2 * state["residual"][m])


def test_svd_gives_rank_r_and_is_exact_when_the_stacked_rank_fits():
    gen = torch.Generator().manual_seed(1)
    glob = adapter(gen)
    masks = {1: rank_masks({k: tuple(v.shape) for k, v in glob.items()}, 1),
             2: rank_masks({k: tuple(v.shape) for k, v in glob.items()}, 2)}
    # mixed ranks 1, 1, 2 inside the rank-4 model: stacked rank 4 fits the target rank
    locals_ = [truncate_to_rank(adapter(gen), masks[r]) for r in (1, 1, 2)]
    value, plan = round_value(glob, locals_)
    _, out, metrics = LoraAggregateStage("svd", scaling=S, rank=R).apply({"residual": {}}, value, plan)
    assert metrics["max_error"] < 1e-5
    for k, v in glob.items():
        assert out.aggregate[k].shape == v.shape  # a valid adapter of the target rank
    _, _, naive = LoraAggregateStage("naive", scaling=S, rank=R).apply({"residual": {}}, *round_value(glob, locals_))
    assert naive["max_error"] > 0.1


def _only_b(state: dict) -> dict:
    return {k: v for k, v in state.items() if "lora_B" in k}


def test_ffa_is_exact_on_b_alone_and_rejects_an_update_that_carries_a(setup):
    glob, locals_ = setup
    frozen = {k: v for k, v in glob.items() if "lora_A" in k}  # every party's fixed A
    stage = LoraAggregateStage("ffa", scaling=S, rank=R, frozen=frozen)
    value, plan = round_value(_only_b(glob), [_only_b(loc) for loc in locals_])
    _, out, metrics = stage.apply({"residual": {}}, value, plan)
    assert set(out.aggregate) == set(_only_b(glob))
    assert metrics["max_error"] < 1e-5  # mean(B_i) A == mean(B_i A): the product is linear in B
    for m in DIMS:  # and the applied product is that mean, by hand
        new = {**frozen, **{k: glob[k] + out.aggregate[k] for k in _only_b(glob)}}
        with_a = [{**frozen, **_only_b(loc)} for loc in locals_]
        torch.testing.assert_close(product(new, m), target(with_a, [1, 2, 3], m), atol=1e-5, rtol=1e-5)
    with pytest.raises(UpdateRejected, match="lora_A"):
        stage.apply({"residual": {}}, *round_value(glob, locals_))
    with pytest.raises(ConfigError, match="frozen"):
        LoraAggregateStage("ffa", scaling=S, rank=R)


def test_needs_the_global_adapter_and_a_known_method(setup):
    glob, locals_ = setup
    value, _ = round_value(glob, locals_)
    with pytest.raises(PipelineError, match="GlobalAtStart"):
        LoraAggregateStage("naive", scaling=S, rank=R).apply({"residual": {}}, value, RoundPlan(1, (), 0.1, 1, 0))
    with pytest.raises(ConfigError, match="unknown"):
        LoraAggregateStage("mean", scaling=S, rank=R)
