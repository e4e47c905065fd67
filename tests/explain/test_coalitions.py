"""Coalition models from stored deltas, and per-round contributions on real tensors."""

from __future__ import annotations

import statistics

import pytest
import torch

from fedlm.errors import ConfigError
from fedlm.explain import (
    coalition_aggregate,
    cumulative,
    flag_negative,
    round_contributions,
)

# ---- coalition_aggregate ------------------------------------------------------------


def _two_clients():
    global_state = {"w": torch.tensor([1.0, 1.0]), "frozen": torch.tensor([7.0])}
    updates = {"a": {"w": torch.tensor([2.0, 0.0])}, "b": {"w": torch.tensor([0.0, 4.0])}}
    weights = {"a": 1.0, "b": 3.0}
    return global_state, updates, weights


def test_coalition_aggregate_is_fedavg_of_the_coalition() -> None:
    g, ups, w = _two_clients()
    both = coalition_aggregate(g, ups, w, {"a", "b"})
    # 1/4 * [2, 0] + 3/4 * [0, 4] = [0.5, 3] added to [1, 1].
    assert torch.allclose(both["w"], torch.tensor([1.5, 4.0]))
    assert torch.equal(both["frozen"], torch.tensor([7.0]))  # untouched by the deltas
    only_a = coalition_aggregate(g, ups, w, frozenset({"a"}))
    assert torch.allclose(only_a["w"], torch.tensor([3.0, 1.0]))  # weights renormalised in S
    assert torch.equal(g["w"], torch.tensor([1.0, 1.0]))  # the starting state is not modified


def test_empty_coalition_is_a_copy_of_the_starting_state() -> None:
    g, ups, w = _two_clients()
    out = coalition_aggregate(g, ups, w, set())
    assert torch.equal(out["w"], g["w"]) and out["w"] is not g["w"]


def test_coalition_aggregate_keeps_the_global_dtype() -> None:
    g = {"w": torch.zeros(3, dtype=torch.float64)}
    out = coalition_aggregate(g, {"a": {"w": torch.ones(3)}}, {"a": 2.0}, {"a"})
    assert out["w"].dtype == torch.float64 and torch.equal(out["w"], torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("updates", "weights", "coalition", "match"),
    [
        ({"a": {"w": torch.ones(2)}}, {"a": 1.0}, {"z"}, "'z' has no stored update"),
        ({"a": {"w": torch.ones(2)}}, {"a": -1.0}, {"a"}, "weights must be >= 0"),
        ({"a": {"w": torch.ones(2)}}, {"a": 0.0}, {"a"}, "sum to 0"),
        ({"a": {"v": torch.ones(2)}}, {"a": 1.0}, {"a"}, "'v' is not in the global state"),
        ({"a": {"w": torch.ones(3)}}, {"a": 1.0}, {"a"}, "shape"),
    ],
)
def test_coalition_aggregate_rejects_bad_inputs(updates, weights, coalition, match) -> None:
    with pytest.raises(ConfigError, match=match):
        coalition_aggregate({"w": torch.zeros(2)}, updates, weights, coalition)


# ---- round_contributions on a 6-client vector setting --------------------------------


def six_clients():
    """4 honest deltas towards a target (with noise), a duplicate of c0, a garbage delta.

    Utility of a model w: -||w - target||^2 (starting state 0). FedAvg with equal weights.
    """
    g = torch.Generator().manual_seed(0)
    target = torch.randn(8, generator=g)
    updates = {
        f"c{i}": {"w": alpha * target + 0.3 * torch.randn(8, generator=g)}
        for i, alpha in enumerate([1.2, 1.0, 0.8, 0.6])
    }
    updates["dup"] = {"w": updates["c0"]["w"].clone()}
    updates["bad"] = {"w": -1.0 * target}  # points away from the target
    weights = dict.fromkeys(updates, 1.0)
    global_state = {"w": torch.zeros(8)}

    def evaluate(state) -> float:
        return -float(((state["w"] - target) ** 2).sum())

    total_gain = evaluate(coalition_aggregate(global_state, updates, weights, updates)) - evaluate(
        global_state
    )
    return global_state, updates, weights, evaluate, total_gain


def test_exact_on_six_clients() -> None:
    g, ups, w, ev, gain = six_clients()
    res = round_contributions(g, ups, w, evaluate=ev, method="exact")
    assert res.evaluations == 2**6
    assert sum(res.values.values()) == pytest.approx(gain, rel=1e-5)  # efficiency
    assert res.values["dup"] == pytest.approx(res.values["c0"], abs=1e-6)  # symmetry
    assert flag_negative(res.values) == ["bad"]
    # honest clients rank by how far their delta goes towards the target
    assert res.values["c0"] > res.values["c1"] > res.values["c2"] > res.values["c3"] > 0


def test_loo_on_six_clients() -> None:
    g, ups, w, ev, _ = six_clients()
    res = round_contributions(g, ups, w, evaluate=ev, method="loo")
    assert res.evaluations == 6 + 1
    full = ev(coalition_aggregate(g, ups, w, ups))
    without_bad = ev(coalition_aggregate(g, ups, w, set(ups) - {"bad"}))
    assert res.values["bad"] == pytest.approx(full - without_bad)
    assert res.values["dup"] == pytest.approx(res.values["c0"])
    assert "bad" in flag_negative(res.values)


@pytest.mark.parametrize(("epsilon", "truncates"), [(1e-3, False), (1.0, True)])
def test_gtg_tracks_exact_on_six_clients(epsilon: float, truncates: bool) -> None:
    g, ups, w, ev, gain = six_clients()
    exact = round_contributions(g, ups, w, evaluate=ev, method="exact")
    gtg = round_contributions(
        g, ups, w, evaluate=ev, method="gtg", epsilon=epsilon, convergence_tol=0.002,
        max_permutations=2000, seed=0,
    )
    ids = sorted(ups)
    pearson = statistics.correlation([exact.values[i] for i in ids], [gtg.values[i] for i in ids])
    assert pearson >= 0.9
    assert gtg.converged is True
    # the duplicated pair shares credit: equal up to Monte-Carlo error (< 10% of the gain)
    assert abs(gtg.values["dup"] - gtg.values["c0"]) < 0.1 * abs(gain)
    assert flag_negative(gtg.values, tol=0.05 * abs(gain)) == ["bad"]
    if truncates:  # epsilon ~ 10% of the gain: prefixes close to u(all) are not evaluated
        assert gtg.evaluations < exact.evaluations
    else:  # caching: many permutations still cost at most the 2**6 distinct coalitions
        assert gtg.evaluations <= exact.evaluations


def test_gtg_round_is_deterministic_for_a_seed() -> None:
    g, ups, w, ev, _ = six_clients()
    kwargs = {"evaluate": ev, "method": "gtg", "epsilon": 1.0, "seed": 7}
    first = round_contributions(g, ups, w, **kwargs)
    # same clients listed in another order: ids are sorted, so the sampling is the same
    reordered = {cid: ups[cid] for cid in reversed(list(ups))}
    assert round_contributions(g, reordered, w, **kwargs) == first


def test_gtg_round_truncation_when_nothing_changed() -> None:
    g, ups, w, ev, _ = six_clients()
    zero = {cid: {"w": torch.zeros(8)} for cid in ups}
    res = round_contributions(g, zero, w, evaluate=ev, method="gtg")
    assert res.round_truncated and set(res.values.values()) == {0.0}
    assert res.evaluations == 2


def test_cumulative_over_rounds_flags_the_garbage_client() -> None:
    g, ups, w, ev, _ = six_clients()
    rounds = [round_contributions(g, ups, w, evaluate=ev, method="loo") for _ in range(2)]
    total = cumulative(rounds)
    assert total["bad"] == pytest.approx(2 * rounds[0].values["bad"])
    assert flag_negative(total)[0] == "bad"


def test_round_contributions_rejects_bad_requests() -> None:
    g, ups, w, ev, _ = six_clients()
    with pytest.raises(ConfigError, match="unknown contribution method"):
        round_contributions(g, ups, w, evaluate=ev, method="off")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same clients"):
        round_contributions(g, ups, {"c0": 1.0}, evaluate=ev)
    many = {f"p{i}": {"w": torch.ones(8)} for i in range(9)}
    with pytest.raises(ConfigError, match="max_players=8"):
        round_contributions(g, many, dict.fromkeys(many, 1.0), evaluate=ev, method="exact")
