"""The benchmark rule's statistics against hand-worked cases."""

import math

import pytest

from benchmarks._stats import (
    accuracy_ci,
    binom_two_sided,
    bootstrap_ci,
    mcnemar_exact,
    mean_std,
    paired_bootstrap,
    paired_over_seeds,
    ratio_spread,
    sign_flip_p,
    spread,
    t_interval,
    verdict,
)


def test_mean_std_uses_the_sample_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0
    assert s == pytest.approx(1.0)  # sqrt(((1-2)^2 + 0 + (3-2)^2) / 2)
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_bootstrap_of_a_constant_is_that_constant():
    ci = bootstrap_ci([0.5] * 20)
    assert (ci.estimate, ci.lo, ci.hi) == (0.5, 0.5, 0.5)


def test_accuracy_interval_brackets_the_accuracy_and_shrinks_with_items():
    small = accuracy_ci([True, False] * 10)  # 20 items at 0.5
    large = accuracy_ci([True, False] * 250)  # 500 items at 0.5
    assert small.estimate == large.estimate == 0.5
    assert small.lo < 0.5 < small.hi
    assert (large.hi - large.lo) < (small.hi - small.lo)
    # normal approximation: half-width 1.96 * sqrt(0.25 / 500) = 0.0438
    assert (large.hi - large.lo) / 2 == pytest.approx(0.0438, abs=0.006)


def test_bootstrap_is_seeded():
    xs = [0.1, 0.7, 0.3, 0.9, 0.5]
    assert bootstrap_ci(xs, seed=3) == bootstrap_ci(xs, seed=3)


def test_binomial_two_sided_by_hand():
    # n = 4, k = 0: P(X <= 0) = 1/16, two-sided 2/16
    assert binom_two_sided(0, 4) == pytest.approx(0.125)
    # n = 5, k = 1: P(X <= 1) = (1 + 5) / 32, two-sided 12/32
    assert binom_two_sided(1, 5) == pytest.approx(12 / 32)
    assert binom_two_sided(2, 4) == 1.0  # the middle: capped at 1
    assert binom_two_sided(0, 0) == 1.0


def test_mcnemar_counts_only_discordant_items():
    a = [True, True, True, False, True, True]
    b = [True, False, False, False, False, False]
    out = mcnemar_exact(a, b)
    assert (out["a_only"], out["b_only"], out["n"]) == (4, 0, 6)
    assert out["p_value"] == pytest.approx(2 / 16)  # 4 of 4 discordant one way
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_sign_flip_exact_by_hand():
    # three positive differences: of 8 sign patterns, 2 (all + or all -) reach |mean| = 1
    assert sign_flip_p([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0  # mean 0: every pattern is as extreme


def test_sign_flip_monte_carlo_finds_a_large_shift():
    assert sign_flip_p([0.5 + 0.01 * i for i in range(40)]) < 0.001


def test_paired_bootstrap_reports_a_minus_b():
    a = [0.9, 0.8, 0.7, 0.6, 0.95, 0.85]
    b = [x - 0.1 for x in a]
    res = paired_bootstrap(a, b)
    assert res.diff.estimate == pytest.approx(0.1)
    assert res.diff.lo == pytest.approx(0.1) and res.diff.hi == pytest.approx(0.1)
    assert res.p_value == pytest.approx(2 / 64)  # exact: only all-+ and all-- reach 0.1
    assert res.n == 6


def test_paired_over_seeds_counts_a_shared_item_once():
    # 2 items scored in 3 seeds: item 0 always +1 better, item 1 always equal.
    a = [[1.0, 0.0]] * 3
    b = [[0.0, 0.0]] * 3
    shared = paired_over_seeds(a, b, shared_items=True)
    assert shared.n == 2 and shared.diff.estimate == pytest.approx(0.5)
    assert shared.p_value == pytest.approx(1.0)  # exact over 4 sign patterns: |mean| >= 0.5 in all
    assert "averaged over 3 seeds" in shared.test
    drawn = paired_over_seeds(a, b, shared_items=False)  # each seed its own items: 6 of them
    assert drawn.n == 6 and drawn.diff.estimate == pytest.approx(0.5)
    assert drawn.p_value == pytest.approx(16 / 64)  # 3 nonzero diffs of 1: all-same signs among 2^3, x 2^3 zeros


def test_paired_over_seeds_averages_each_item_over_seeds():
    a = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    b = [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    res = paired_over_seeds(a, b, shared_items=True)
    # item 0: (1 + 0 + 1)/3 - 0 = 2/3; item 1: (0 + 0 + 1)/3 - 1/3 = 0
    assert res.diff.estimate == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same items"):
        paired_over_seeds([[1.0], [1.0, 0.0]], [[0.0], [0.0, 0.0]], shared_items=True)
    with pytest.raises(ValueError, match="same seeds"):
        paired_over_seeds([[1.0]], [], shared_items=False)


@pytest.mark.parametrize("diffs, higher, status", [
    ([0.1, 0.2], True, "not established"),        # 2 seeds < 3
    ([0.1, 0.2, 0.05], True, "met"),
    ([-0.1, -0.2, -0.05], True, "missed"),
    ([0.1, -0.2, 0.05], True, "not separable"),
    ([-0.1, -0.2, -0.05], False, "met"),          # lower is better: negative differences win
    ([0.1, 0.2, 0.05], False, "missed"),
])
def test_verdict_without_a_paired_test(diffs, higher, status):
    assert verdict(diffs, higher_is_better=higher).status == status


def test_verdict_needs_the_paired_test_to_agree():
    good = paired_bootstrap([1.0] * 20, [0.0] * 20)
    noisy = paired_bootstrap([1.0, 0.0] * 10, [0.0, 1.0] * 10)
    assert verdict([0.1, 0.2, 0.1], paired=good).status == "met"
    assert verdict([0.1, 0.2, 0.1], paired=noisy).status == "not separable"


def test_verdict_margin():
    # beats B by 0.1, 0.2, 0.15 but the goal asks for more than 0.12
    assert verdict([0.1, 0.2, 0.15], margin=0.12).status == "not separable"
    assert verdict([0.13, 0.2, 0.15], margin=0.12).status == "met"


def test_spread_and_ratio_spread():
    s = spread([3.0, 1.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    r = ratio_spread([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert (r.median, r.lo, r.hi) == (2.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        ratio_spread([1.0], [1.0, 2.0])
    assert math.isfinite(spread([0.5]).median)


def test_t_interval_of_one_two_three():
    ci = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 df) * sd 1 / sqrt(3)
    assert ci.estimate == 2.0
    assert ci.lo == pytest.approx(2.0 - half, rel=1e-6)
    assert ci.hi == pytest.approx(2.0 + half, rel=1e-6)
    with pytest.raises(ValueError):
        t_interval([1.0])
