"""Contribution estimators on games whose Shapley values are known by hand."""

from __future__ import annotations

import math

import pytest

from fedlm.errors import ConfigError
from fedlm.explain.contribution import (
    CachedUtility,
    ContributionResult,
    cumulative,
    exact_shapley,
    flag_negative,
    gtg_shapley,
    leave_one_out,
)


def additive(values: dict[str, float]):
    return lambda s: sum(values[p] for p in s)


def glove(s: frozenset[str]) -> float:
    """One left glove L and two right gloves R1, R2: a pair is worth 1."""
    return 1.0 if "L" in s and ("R1" in s or "R2" in s) else 0.0


def majority(s: frozenset[str]) -> float:
    """Weighted majority game [4; A=3, B=1, C=1, D=1]."""
    weight = {"A": 3, "B": 1, "C": 1, "D": 1}
    return 1.0 if sum(weight[p] for p in s) >= 4 else 0.0


class Recorder:
    """A utility that records every call (to check caching and sampling)."""

    def __init__(self, utility) -> None:
        self.utility = utility
        self.calls: list[frozenset[str]] = []

    def __call__(self, s: frozenset[str]) -> float:
        self.calls.append(s)
        return self.utility(s)


def test_exact_additive_game_gives_individual_values() -> None:
    vals = {"a": 1.0, "b": -2.0, "c": 0.5, "d": 3.0}
    res = exact_shapley(vals, additive(vals))
    assert res.values == pytest.approx(vals)
    assert res.evaluations == 2**4 and res.method == "exact"


def test_exact_glove_game() -> None:
    # L is pivotal whenever some R precedes it: 4 of the 6 orders -> 2/3; R1, R2 split 1/3.
    res = exact_shapley(["L", "R1", "R2"], glove)
    assert res.values == pytest.approx({"L": 2 / 3, "R1": 1 / 6, "R2": 1 / 6})


def test_exact_weighted_majority_game() -> None:
    # A wins with anyone: pivotal unless first (3/4). B is pivotal only in orders A, B, ...
    # (2 of 24 = 1/12); likewise C and D.
    res = exact_shapley(["A", "B", "C", "D"], majority)
    assert res.values == pytest.approx({"A": 3 / 4, "B": 1 / 12, "C": 1 / 12, "D": 1 / 12})


def test_exact_efficiency_symmetry_null_player() -> None:
    w = {"a": 1.0, "b": 2.0, "c": 2.0, "z": 0.0}

    def u(s: frozenset[str]) -> float:  # non-additive, with a constant u(empty) = 1
        return 1.0 + sum(w[p] for p in s) ** 2

    res = exact_shapley(w, u)
    assert sum(res.values.values()) == pytest.approx(u(frozenset(w)) - u(frozenset()))
    assert res.values["b"] == pytest.approx(res.values["c"])  # symmetric players
    assert res.values["z"] == pytest.approx(0.0)  # null player
    assert res.values["a"] < res.values["b"]


def test_exact_refuses_large_cohorts_unless_asked() -> None:
    players = [f"p{i}" for i in range(9)]
    with pytest.raises(ConfigError, match=r"2\*\*9 = 512.*max_players=8"):
        exact_shapley(players, lambda s: float(len(s)))
    res = exact_shapley(players, lambda s: float(len(s)), max_players=9)
    assert res.evaluations == 512
    assert res.values == pytest.approx(dict.fromkeys(players, 1.0))


def test_duplicate_player_ids_are_refused() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        exact_shapley(["a", "a"], lambda s: 0.0)


def test_leave_one_out_by_hand() -> None:
    # u(N) = 1; without L there is no pair (1 - 0); without either R the other suffices (0).
    res = leave_one_out(["L", "R1", "R2"], glove)
    assert res.values == {"L": 1.0, "R1": 0.0, "R2": 0.0}
    assert res.evaluations == 4 and res.method == "loo"


def test_cached_utility_counts_distinct_coalitions() -> None:
    rec = Recorder(lambda s: float(len(s)))
    u = CachedUtility(rec)
    for s in (frozenset("a"), frozenset("a"), frozenset("ab"), frozenset("ba")):
        u(s)
    assert u.evaluations == 2 and len(rec.calls) == 2


def test_cached_utility_rejects_nan() -> None:
    with pytest.raises(ConfigError, match="finite"):
        CachedUtility(lambda s: math.nan)(frozenset())


def test_gtg_exact_on_additive_game() -> None:
    # Every permutation gives each player its own value as marginal gain.
    vals = {"a": 1.0, "b": 2.0, "c": 4.0}
    res = gtg_shapley(vals, additive(vals), epsilon=0.0)
    assert res.values == pytest.approx(vals)
    assert res.converged is True
    assert res.permutations == 6  # converged after the second rotation of 3 leaders


def test_gtg_guided_sampling_puts_each_player_first() -> None:
    vals = {p: 1.0 for p in "abcde"}
    rec = Recorder(additive(vals))
    res = gtg_shapley(vals, rec, epsilon=0.0, max_permutations=5)
    singletons = {s for s in rec.calls if len(s) == 1}
    assert singletons == {frozenset(p) for p in "abcde"}
    assert res.permutations == 5 and res.converged is False


def test_gtg_within_round_truncation_stops_permutations() -> None:
    # Any non-empty coalition already achieves u(all) = 1: after the leader the prefix is
    # within epsilon of u(all) and nothing more is evaluated. Guided sampling makes each
    # of the 4 players lead once per rotation, so each gets exactly 1/4 (the Shapley value).
    players = ["a", "b", "c", "d"]
    rec = Recorder(lambda s: 1.0 if s else 0.0)
    res = gtg_shapley(players, rec, epsilon=0.1)
    assert res.values == pytest.approx(dict.fromkeys(players, 0.25))
    assert res.evaluations == 1 + 1 + 4  # empty, everyone, the 4 singletons
    assert len(rec.calls) == res.evaluations  # memoised
    assert res.evaluations < 2**4


def test_gtg_between_round_truncation_gives_zero() -> None:
    rec = Recorder(lambda s: 0.5 + 1e-4 * len(s))
    res = gtg_shapley(["a", "b", "c"], rec, round_threshold=1e-3)
    assert res.round_truncated is True
    assert res.values == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert res.evaluations == 2 and res.permutations == 0


def test_gtg_is_deterministic_for_a_seed_and_close_to_exact() -> None:
    players = ["A", "B", "C", "D"]
    first = gtg_shapley(players, majority, epsilon=0.0, seed=3, max_permutations=400,
                        convergence_tol=0.01)
    again = gtg_shapley(players, majority, epsilon=0.0, seed=3, max_permutations=400,
                        convergence_tol=0.01)
    assert first == again
    exact = exact_shapley(players, majority).values
    # Monte-Carlo estimate: within 0.1 of the exact values (which sum to 1).
    for p in players:
        assert abs(first.values[p] - exact[p]) < 0.1
    assert sum(first.values.values()) == pytest.approx(1.0)  # no truncation: efficient


def test_gtg_empty_cohort() -> None:
    res = gtg_shapley([], lambda s: 0.0)
    assert res.values == {} and res.evaluations == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": -1.0}, "epsilon"),
        ({"round_threshold": -1.0}, "round_threshold"),
        ({"max_permutations": 0}, "max_permutations"),
        ({"convergence_tol": 0.0}, "convergence_tol"),
    ],
)
def test_gtg_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        gtg_shapley(["a"], lambda s: 0.0, **kwargs)


def test_cumulative_sums_per_client() -> None:
    r1 = ContributionResult(values={"a": 1.0, "b": -0.5}, evaluations=4, method="loo")
    r2 = ContributionResult(values={"b": 2.0, "c": 0.25}, evaluations=4, method="loo")
    assert cumulative([r1, r2]) == {"a": 1.0, "b": 1.5, "c": 0.25}
    assert cumulative([]) == {}


def test_flag_negative_with_tolerance() -> None:
    values = {"a": 0.3, "b": -0.01, "c": -2.0, "d": -0.5}
    assert flag_negative(values) == ["c", "d", "b"]
    assert flag_negative(values, tol=0.1) == ["c", "d"]
    with pytest.raises(ConfigError, match="tol"):
        flag_negative(values, tol=-1.0)
