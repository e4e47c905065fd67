"""LoRA-aware aggregation: exactness against naive averaging, mixed ranks, hand-worked weights."""

from __future__ import annotations

import math

import pytest
import torch

from fedlm.aggregation.lora import (
    LORA_METHODS,
    LoraAggregate,
    aggregate_fedex,
    aggregate_ffa,
    aggregate_hetlora,
    aggregate_lora,
    aggregate_naive,
    aggregate_svd,
    aggregation_error,
    fold_residuals,
    lora_scaling,
    pad_lora_rank,
    pair_lora_tensors,
    svd_reproject,
    truncate_lora_rank,
)
from fedlm.errors import ConfigError, ProtocolError

PREFIX = "base_model.model.model.layers.0.self_attn"
Q, V = f"{PREFIX}.q_proj", f"{PREFIX}.v_proj"
DIMS = {Q: (6, 5), V: (4, 5)}  # module -> (out, in)


def adapter(
    gen: torch.Generator, rank: int, *, shared_a: dict | None = None, dims: dict = DIMS
) -> dict[str, torch.Tensor]:
    """A random PEFT-named adapter: q_proj and v_proj LoRA pairs plus a plain tensor."""
    state = {"base_model.model.score.weight": torch.randn(3, generator=gen)}
    for module, (out, inp) in dims.items():
        a = shared_a[module] if shared_a else torch.randn(rank, inp, generator=gen)
        state[f"{module}.lora_A.weight"] = a.clone()
        state[f"{module}.lora_B.weight"] = torch.randn(out, rank, generator=gen)
    return state


@pytest.fixture
def clients() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [adapter(gen, 2) for _ in range(3)]


WEIGHTS = [1.0, 2.0, 3.0]


# ------------------------------------------------------------------ names


def test_pair_lora_tensors_groups_peft_names():
    names = [
        f"{Q}.lora_A.weight",
        f"{Q}.lora_B.weight",
        f"{V}.lora_A.default.weight",  # the form inside a live PEFT model
        f"{V}.lora_B.default.weight",
        "base_model.model.score.weight",
        "base_model.model.model.embed_tokens.lora_embedding_A",
    ]
    layout = pair_lora_tensors(names)
    assert layout.pairs == {Q: (names[0], names[1]), V: (names[2], names[3])}
    assert layout.other == (names[4], names[5])


def test_pair_lora_tensors_rejects_a_without_b():
    with pytest.raises(ProtocolError, match="partner"):
        pair_lora_tensors([f"{Q}.lora_A.weight"])


# ------------------------------------------------------------------ hand-worked weights

# Two clients, r = 1, (out, in) = (2, 2), weights 3:1 -> w = (0.75, 0.25).
# client 1: A = [1, 0], B = [1, 0]^T;  client 2: A = [0, 1], B = [0, 2]^T.
# A_bar = [0.75, 0.25], B_bar = [0.75, 0.5]^T, B_bar A_bar = [[0.5625, 0.1875], [0.375, 0.125]]
# target = 0.75 [[1, 0], [0, 0]] + 0.25 [[0, 0], [0, 2]] = [[0.75, 0], [0, 0.5]]
# residual (s = 1) = [[0.1875, -0.1875], [-0.375, 0.375]]
TWO = [
    {"m.lora_A.weight": torch.tensor([[1.0, 0.0]]), "m.lora_B.weight": torch.tensor([[1.0], [0.0]]),
     "bias": torch.tensor([1.0, 1.0])},
    {"m.lora_A.weight": torch.tensor([[0.0, 1.0]]), "m.lora_B.weight": torch.tensor([[0.0], [2.0]]),
     "bias": torch.tensor([5.0, -3.0])},
]  # fmt: skip


def test_weights_respected_naive_and_fedex():
    naive = aggregate_naive(TWO, [3, 1])
    torch.testing.assert_close(naive.state["m.lora_A.weight"], torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(naive.state["m.lora_B.weight"], torch.tensor([[0.75], [0.5]]))
    torch.testing.assert_close(naive.state["bias"], torch.tensor([2.0, 0.0]))
    # ||residual|| / ||target|| = sqrt(2 * 0.1875^2 + 2 * 0.375^2) / sqrt(0.75^2 + 0.5^2)
    err = aggregation_error(TWO, [3, 1], naive)["m"]
    assert err == pytest.approx(math.sqrt(0.3515625 / 0.8125), rel=1e-6)

    fedex = aggregate_fedex(TWO, [3, 1], scaling=2.0)  # scaling doubles the residual
    torch.testing.assert_close(fedex.state["m.lora_A.weight"], torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(fedex.residuals["m"], torch.tensor([[0.375, -0.375], [-0.75, 0.75]]))
    assert fedex.residual_bytes == 2 * 2 * 4 == fedex.metrics["residual_bytes"]
    assert aggregation_error(TWO, [3, 1], fedex, scaling=2.0)["m"] < 1e-7


def test_weights_respected_svd_rank_one():
    # target diag(0.75, 0.5): the rank-1 SVD keeps 0.75 e1 e1^T and drops 0.5 of ||0.8125||^(1/2)
    result = aggregate_svd(TWO, [3, 1], rank=1)
    a, b = result.state["m.lora_A.weight"], result.state["m.lora_B.weight"]
    torch.testing.assert_close(b @ a, torch.tensor([[0.75, 0.0], [0.0, 0.0]]))
    # the split is symmetric: B = U sqrt(S), A = sqrt(S) V^T, so both norms are sqrt(0.75)
    assert b.norm().item() == pytest.approx(math.sqrt(0.75)) == a.norm().item()
    assert result.metrics["max_truncation_error"] == pytest.approx(0.5 / math.sqrt(0.8125))
    torch.testing.assert_close(result.state["bias"], torch.tensor([2.0, 0.0]))


# ------------------------------------------------------------------ exactness on random adapters


def test_naive_is_inexact_on_random_adapters(clients):
    errors = aggregation_error(clients, WEIGHTS, aggregate_naive(clients, WEIGHTS))
    assert set(errors) == {Q, V}
    assert min(errors.values()) > 0.1


def test_fedex_is_exact_on_random_adapters(clients):
    result = aggregate_fedex(clients, WEIGHTS, scaling=lora_scaling(16, 2))
    errors = aggregation_error(clients, WEIGHTS, result, scaling=8.0)
    assert max(errors.values()) < 1e-5
    assert result.residuals[Q].shape == (6, 5) and result.residuals[V].shape == (4, 5)
    assert result.residual_bytes == (6 * 5 + 4 * 5) * 4


def test_svd_at_stacked_rank_is_exact(clients):
    result = aggregate_svd(clients, WEIGHTS, rank=2 * 3)  # r * n
    assert max(aggregation_error(clients, WEIGHTS, result).values()) < 1e-5
    assert result.state[f"{Q}.lora_A.weight"].shape == (6, 5)
    assert result.state[f"{Q}.lora_B.weight"].shape == (6, 6)


def test_svd_at_rank_r_is_exact_when_the_sum_has_rank_r():
    gen = torch.Generator().manual_seed(1)
    a = {m: torch.randn(2, inp, generator=gen) for m, (_, inp) in DIMS.items()}
    shared = [adapter(gen, 2, shared_a=a) for _ in range(3)]  # Σ w B_i A = (Σ w B_i) A: rank 2
    assert (
        max(aggregation_error(shared, WEIGHTS, aggregate_svd(shared, WEIGHTS, rank=2)).values())
        < 1e-5
    )
    naive_err = aggregation_error(shared, WEIGHTS, aggregate_naive(shared, WEIGHTS))
    assert max(naive_err.values()) < 1e-6  # with A shared, naive is exact as well
    ffa = aggregate_ffa(shared, WEIGHTS)
    assert max(aggregation_error(shared, WEIGHTS, ffa).values()) < 1e-6
    torch.testing.assert_close(ffa.state[f"{Q}.lora_A.weight"], a[Q])


def test_svd_below_sum_rank_reports_truncation(clients):
    result = aggregate_svd(clients, WEIGHTS, rank=2)
    errors = aggregation_error(clients, WEIGHTS, result)
    assert 0 < max(errors.values()) == pytest.approx(result.metrics["max_truncation_error"])


def test_ffa_rejects_clients_that_moved_a(clients):
    with pytest.raises(ProtocolError, match="lora_A"):
        aggregate_ffa(clients, WEIGHTS)


def test_svd_reproject_zero_pads_when_the_product_has_lower_rank():
    a, b = torch.ones(1, 3), torch.ones(2, 1)
    new_a, new_b, discarded = svd_reproject(a, b, 3)
    assert new_a.shape == (3, 3) and new_b.shape == (2, 3) and discarded == 0.0
    torch.testing.assert_close(new_b @ new_a, b @ a)


# ------------------------------------------------------------------ heterogeneous ranks


def test_zero_padding_keeps_the_product():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 5, generator=gen), torch.randn(6, 4, generator=gen)
    pa, pb = pad_lora_rank(a, b, 16)
    assert pa.shape == (16, 5) and pb.shape == (6, 16)
    assert torch.equal(pb @ pa, b @ a)


def test_truncate_by_norm_keeps_the_largest_components():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])  # row norms 1, 3, 2
    b = torch.eye(3)  # column norms 1
    ta, tb = truncate_lora_rank(a, b, 2, by="norm")
    torch.testing.assert_close(ta, a[[1, 2]])  # components 1 and 2, original order
    torch.testing.assert_close(tb, b[:, [1, 2]])
    ia, _ = truncate_lora_rank(a, b, 2, by="index")
    torch.testing.assert_close(ia, a[:2])


WIDE = {Q: (20, 24), V: (12, 24)}  # wide enough that rank 8 cannot hold the true sum


@pytest.fixture
def mixed() -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    gen = torch.Generator().manual_seed(3)
    ranks = [4, 8, 16]
    return [adapter(gen, r, dims=WIDE) for r in ranks], [lora_scaling(16, r) for r in ranks]


def test_mixed_ranks_give_a_valid_adapter_of_the_target_rank(mixed):
    states, scalings = mixed
    errors = {}
    for method in ("hetlora", "svd"):
        result = aggregate_lora(method, states, WEIGHTS, rank=8, scaling=scalings, out_scaling=2.0)
        for module, (out, inp) in WIDE.items():
            assert result.state[f"{module}.lora_A.weight"].shape == (8, inp)
            assert result.state[f"{module}.lora_B.weight"].shape == (out, 8)
        assert result.scaling == 2.0
        errors[method] = aggregation_error(states, WEIGHTS, result, scaling=scalings)
    # The true sum has rank 24 > 8, so both lose something; the truncated SVD is the best
    # rank-8 approximation (Eckart-Young), so it loses no more than HetLoRA's padded mean.
    for module in WIDE:
        assert 0.05 < errors["svd"][module] <= errors["hetlora"][module]


def test_mixed_ranks_svd_at_total_rank_is_exact(mixed):
    states, scalings = mixed
    result = aggregate_svd(states, WEIGHTS, rank=28, scaling=scalings, out_scaling=0.5)
    assert max(aggregation_error(states, WEIGHTS, result, scaling=scalings).values()) < 1e-5


def test_hetlora_folds_scaling_before_padding():
    # One client: padding to a larger rank and truncating back must keep s_i B A exactly.
    gen = torch.Generator().manual_seed(4)
    state = adapter(gen, 4)
    result = aggregate_hetlora([state], [1.0], rank=4, scaling=[4.0], out_scaling=1.0)
    assert max(aggregation_error([state], [1.0], result, scaling=[4.0]).values()) < 1e-6


def test_uniform_methods_refuse_per_client_scaling(mixed):
    states, scalings = mixed
    with pytest.raises(ConfigError, match="svd"):
        aggregate_naive(states, WEIGHTS, scaling=scalings)


# ------------------------------------------------------------------ plumbing


def test_fold_residuals_adds_to_the_base_layer():
    base = {"m.base_layer.weight": torch.zeros(2, 2), "other.weight": torch.ones(1)}
    fedex = aggregate_fedex(TWO, [3, 1])
    folded = fold_residuals(base, fedex.residuals)
    assert set(folded) == {"m.base_layer.weight"}
    torch.testing.assert_close(folded["m.base_layer.weight"], fedex.residuals["m"])
    conv = fold_residuals({"m.weight": torch.zeros(2, 2)}, fedex.residuals, fan_in_fan_out=True)
    torch.testing.assert_close(conv["m.weight"], fedex.residuals["m"].T)
    with pytest.raises(ProtocolError, match="no base weight"):
        fold_residuals({}, fedex.residuals)


def test_aggregation_error_on_a_bare_state():
    naive = aggregate_naive(TWO, [3, 1])
    assert aggregation_error(TWO, [3, 1], naive.state) == aggregation_error(TWO, [3, 1], naive)


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "one per client"), ([1.0, -1.0], ">= 0"), ([0.0, 0.0], "positive")],
)
def test_bad_weights(weights, match):
    with pytest.raises(ProtocolError, match=match):
        aggregate_naive(TWO, weights)


def test_mismatched_states_and_unknown_method():
    with pytest.raises(ProtocolError, match="other tensors"):
        aggregate_naive([TWO[0], {"bias": torch.zeros(2)}], [1, 1])
    with pytest.raises(ConfigError, match="choose one of"):
        aggregate_lora("mean", TWO, [1, 1])
    assert set(LORA_METHODS) == {"naive", "fedex", "svd", "ffa", "hetlora"}
    assert isinstance(aggregate_lora("ffa", [TWO[0], TWO[0]], [1, 1]), LoraAggregate)
