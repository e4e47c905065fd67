import math

import numpy as np
import pytest

from fedlm.errors import ConfigError
from fedlm.privacy.one_run_audit import (
    audit_epsilon_lower_bound,
    audit_p_value,
    one_run_audit,
)


def _all_correct_closed_form(r, p):
    # delta = 0, v = r: the p-value is q^r, so the bound solves q^r = p, eps = log(q / (1-q)).
    q = p ** (1 / r)
    return math.log(q / (1 - q))


def _randomized_response(eps, m, seed):
    """Canary i is included w.p. 1/2; the 'model' reveals the bit truthfully w.p. e^eps/(1+e^eps)."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
    return np.where(truthful, included, ~included).astype(float), included


def test_all_correct_without_delta_matches_the_closed_form():
    # m = r = 1000 guesses all right at 95%: q = 0.05^(1/1000) = 0.997009, eps = 5.809.
    assert _all_correct_closed_form(1000, 0.05) == pytest.approx(5.809, abs=1e-3)
    got = audit_epsilon_lower_bound(1000, 1000, m=1000, delta=0.0, confidence=0.95)
    assert got == pytest.approx(_all_correct_closed_form(1000, 0.05), abs=1e-5)
    # r = 100: q = 0.05^(1/100) = 0.970487, eps = 3.493.
    got = audit_epsilon_lower_bound(100, 100, m=1000, delta=0.0)
    assert got == pytest.approx(3.493, abs=1e-3)


def test_delta_lowers_the_bound_slightly():
    # m = 1000, delta = 1e-5: 2 m delta = 0.02 times max_i P[r > Bin >= r - i] / i, about
    # 0.02 * r q^(r-1) (1-q) = 0.003 at the bound: 5.78 instead of 5.81.
    no_delta = audit_epsilon_lower_bound(1000, 1000, m=1000, delta=0.0)
    with_delta = audit_epsilon_lower_bound(1000, 1000, m=1000, delta=1e-5)
    assert no_delta - 0.05 < with_delta < no_delta
    assert with_delta == pytest.approx(5.782, abs=2e-3)


def test_p_value_with_delta_hand_worked():
    # r = 10 guesses, v = 9 right, m = 20 canaries, eps = 1, delta = 1e-3, q = e / (1 + e).
    r, v, m, delta = 10, 9, 20, 1e-3
    q = math.e / (1 + math.e)

    def pmf(k):
        return math.comb(r, k) * q**k * (1 - q) ** (r - k)

    tail = pmf(9) + pmf(10)  # P[Bin >= 9]
    # alpha = max over i = 1..9 of P[9 > Bin >= 9 - i] / i = sum_{k=9-i}^{8} pmf(k) / i.
    alpha = max(sum(pmf(k) for k in range(9 - i, 9)) / i for i in range(1, 10))
    assert alpha == pytest.approx(pmf(8))  # the i = 1 window wins here
    expected = tail + 2 * m * delta * alpha
    assert audit_p_value(v, r, m=m, epsilon=1.0, delta=delta) == pytest.approx(expected, rel=1e-12)
    assert audit_p_value(v, r, m=m, epsilon=1.0, delta=0.0) == pytest.approx(tail, rel=1e-12)


def test_half_right_gives_nothing():
    assert audit_epsilon_lower_bound(500, 1000, m=1000, delta=1e-5) == 0.0
    assert audit_epsilon_lower_bound(0, 0, m=1000, delta=1e-5) == 0.0
    # Barely above chance is still not significant: P[Bin(1000, 1/2) >= 520] = 0.11.
    assert audit_epsilon_lower_bound(520, 1000, m=1000, delta=0.0) == 0.0


def test_bound_is_monotone():
    by_correct = [
        audit_epsilon_lower_bound(v, 1000, m=1000, delta=1e-5) for v in range(500, 1001, 25)
    ]
    assert np.all(np.diff(by_correct) >= 0) and by_correct[-1] > 5
    by_delta = [
        audit_epsilon_lower_bound(950, 1000, m=1000, delta=d) for d in (0, 1e-6, 1e-4, 1e-3)
    ]
    assert np.all(np.diff(by_delta) <= 0)
    by_conf = [
        audit_epsilon_lower_bound(950, 1000, m=1000, delta=1e-5, confidence=c)
        for c in (0.5, 0.9, 0.99)
    ]
    assert np.all(np.diff(by_conf) < 0)


def test_bound_is_the_edge_of_rejection():
    eps = audit_epsilon_lower_bound(900, 1000, m=1000, delta=1e-5)
    assert audit_p_value(900, 1000, m=1000, epsilon=eps, delta=1e-5) < 0.05
    assert audit_p_value(900, 1000, m=1000, epsilon=eps + 1e-5, delta=1e-5) >= 0.05


@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_randomized_response_is_audited_below_and_near_its_epsilon(eps):
    scores, included = _randomized_response(eps, 10_000, seed=int(eps))
    result = one_run_audit(scores, included, delta=1e-5)
    assert 0.5 * eps < result.epsilon_lower_bound <= eps
    assert result.correct > result.guesses / 2
    assert result.choices == 63  # 8 x 8 grid minus (0, 0): Bonferroni over 63 tests
    # Fixing k in advance tests once at the full confidence: a little higher, still valid.
    fixed = one_run_audit(scores, included, delta=1e-5, k_plus=5000, k_minus=5000)
    assert result.epsilon_lower_bound < fixed.epsilon_lower_bound <= eps


def test_randomized_response_bound_is_valid_across_runs():
    # At 95% confidence at most ~5% of runs may exceed the true epsilon; 40 runs, fixed k.
    over = 0
    for seed in range(40):
        scores, included = _randomized_response(1.0, 1000, seed=100 + seed)
        bound = one_run_audit(scores, included, delta=0.0, k_plus=500, k_minus=500)
        over += bound.epsilon_lower_bound > 1.0
    assert over <= 5


def test_uninformative_scores_give_zero():
    rng = np.random.default_rng(7)
    result = one_run_audit(rng.normal(size=2000), rng.random(2000) < 0.5, delta=1e-5)
    assert result.epsilon_lower_bound == 0.0


def test_guesses_follow_the_scores():
    # Scores 0..9; included = top 3 and one of the bottom: k+ = 3 all right, k- = 2 half right.
    scores = np.arange(10.0)
    included = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    result = one_run_audit(scores, included, delta=0.0, k_plus=3, k_minus=2)
    assert (result.correct, result.guesses, result.m) == (4, 5, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(correct=5, guesses=4, m=10), "correct <= guesses"),
        (dict(correct=1, guesses=11, m=10), "guesses <= m"),
    ],
)
def test_bad_counts(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        audit_epsilon_lower_bound(**kwargs, delta=0.0)


def test_bad_audit_inputs():
    s, inc = np.zeros(4), np.zeros(4, dtype=bool)
    with pytest.raises(ConfigError, match="confidence"):
        audit_epsilon_lower_bound(1, 2, m=4, delta=0.0, confidence=1.0)
    with pytest.raises(ConfigError, match="same non-zero length"):
        one_run_audit(s, inc[:3], delta=0.0)
    with pytest.raises(ConfigError, match="both"):
        one_run_audit(s, inc, delta=0.0, k_plus=1)
    with pytest.raises(ConfigError, match="k_plus"):
        one_run_audit(s, inc, delta=0.0, k_plus=3, k_minus=3)
    with pytest.raises(ConfigError, match="no pair"):
        one_run_audit(s, inc, delta=0.0, grid=[0])
    with pytest.raises(ConfigError, match="NaN"):
        one_run_audit(np.array([0.0, np.nan, 1.0, 2.0]), inc, delta=0.0)
