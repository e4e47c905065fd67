"""The statistics every benchmark reports with: one rule, one place.

The rule (BENCHMARKS.md, "How to read these tables"):

* a claim ("met", "beats") holds over >= 3 seeds (or repeats) as mean ± std;
* an accuracy carries a 95% bootstrap interval over its items;
* two methods scored on the same items are compared with a paired test (McNemar's exact
  test for right/wrong items, a paired bootstrap or sign-flip test for per-item losses);
* a timing is the median of >= 3 interleaved repeats (A, B, A, B, ...) with its spread,
  and the load average beside it.

Pure functions of numbers (numpy only), so ``tests/benchmarks/test_stats.py`` checks each
against a hand-worked case.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

MIN_SEEDS = 3  # the fewest seeds (or repeats) a "met" may rest on
LEVEL = 0.95
N_BOOT = 10_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (``lo``, ``hi``) at ``level``."""

    estimate: float
    lo: float
    hi: float
    level: float = LEVEL

    def excludes(self, value: float = 0.0) -> bool:
        return not (self.lo <= value <= self.hi)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "level": self.level}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_std of no values")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt_mean_std(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={len(values)})"


def t_interval(values: Sequence[float], *, level: float = LEVEL) -> Interval:
    """Mean and its Student-t interval over seeds (``n - 1`` degrees of freedom; n >= 2)."""
    from scipy.stats import t as student

    m, s = mean_std(values)
    if len(values) < 2:
        raise ValueError("t_interval needs two or more values")
    half = float(student.ppf(0.5 + level / 2.0, len(values) - 1)) * s / math.sqrt(len(values))
    return Interval(m, m - half, m + half, level)


def bootstrap_ci(values: Sequence[float], *, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (items resampled with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return Interval(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), level)


def accuracy_ci(hits: Sequence[bool], **kw) -> Interval:
    """Accuracy with its 95% bootstrap interval over items."""
    return bootstrap_ci([1.0 if h else 0.0 for h in hits], **kw)


@dataclass(frozen=True)
class PairedResult:
    """``a`` against ``b`` on the same items: the mean difference a - b, its interval, a p-value."""

    n: int
    diff: Interval
    p_value: float
    test: str

    def as_dict(self) -> dict:
        return {"n": self.n, "diff": self.diff.as_dict(), "p_value": self.p_value, "test": self.test}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, level: float = LEVEL,
                     n_boot: int = N_BOOT, seed: int = 0) -> PairedResult:
    """Mean of a - b over shared items, bootstrap interval, and a sign-flip p-value.

    The p-value is the two-sided sign-flip (paired permutation) test of "mean difference 0":
    exact over all 2^n sign patterns for n <= 16, else ``n_boot`` random patterns.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty sequences")
    return PairedResult(d.size, bootstrap_ci(d, level=level, n_boot=n_boot, seed=seed),
                        sign_flip_p(d, n_perm=n_boot, seed=seed), "paired bootstrap + sign-flip")


def paired_over_seeds(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], *,
                      shared_items: bool) -> PairedResult:
    """``a`` against ``b`` pooled over seeds; ``a[s]``, ``b[s]``: per-item scores of seed s.

    Where every seed scores the same items (a fixed test set), the item is the unit: its
    scores are averaged over the seeds before the paired test, so an item scored in three
    seeds counts once. Counting its three copies as independent would narrow the interval
    by up to sqrt(3) when item difficulty, not the seed, drives the differences. Where each
    seed draws its own items, every seed's items are pooled as they are.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_over_seeds needs the same seeds on both sides, got {len(a)} and {len(b)}")
    if not shared_items:
        return paired_bootstrap(np.concatenate([np.asarray(x, dtype=np.float64) for x in a]),
                                np.concatenate([np.asarray(x, dtype=np.float64) for x in b]))
    lengths = {len(x) for x in (*a, *b)}
    if len(lengths) != 1:
        raise ValueError(f"shared_items: every seed must score the same items, got lengths {sorted(lengths)}")
    one = paired_bootstrap(np.mean(np.asarray(a, dtype=np.float64), axis=0),
                           np.mean(np.asarray(b, dtype=np.float64), axis=0))
    return replace(one, test=f"{one.test} over items, each averaged over {len(a)} seeds")


def sign_flip_p(diffs: Sequence[float], *, n_perm: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided p-value of a paired permutation (sign-flip) test of mean(diffs) = 0."""
    d = np.asarray(diffs, dtype=np.float64)
    observed = abs(d.mean())
    if d.size <= 16:  # exact: every sign pattern
        signs = ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
        means = np.abs((signs * d).mean(axis=1))
        return float(np.mean(means >= observed - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, d.size))
    means = np.abs((signs * d).mean(axis=1))
    return float((1 + np.sum(means >= observed - 1e-12)) / (n_perm + 1))


def mcnemar_exact(hits_a: Sequence[bool], hits_b: Sequence[bool]) -> dict:
    """McNemar's exact test on paired right/wrong items.

    Returns ``{"a_only", "b_only", "p_value", "n"}``: the discordant counts (items only a
    got right, only b got right) and the two-sided binomial p-value of a_only ~ Bin(a_only
    + b_only, 1/2).
    """
    if len(hits_a) != len(hits_b):
        raise ValueError(f"mcnemar_exact needs paired items, got {len(hits_a)} and {len(hits_b)}")
    a_only = sum(1 for x, y in zip(hits_a, hits_b) if x and not y)
    b_only = sum(1 for x, y in zip(hits_a, hits_b) if y and not x)
    return {"a_only": a_only, "b_only": b_only, "p_value": binom_two_sided(a_only, a_only + b_only),
            "n": len(hits_a)}


def binom_two_sided(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of k successes in n trials at p = 1/2."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Verdict:
    """Whether a claim holds under the rule, and why."""

    status: str  # "met", "missed", "not separable", "not established"
    reason: str

    def __str__(self) -> str:
        return f"{self.status} ({self.reason})"


def verdict(per_seed_diffs: Sequence[float], *, paired: PairedResult | None = None,
            higher_is_better: bool = True, alpha: float = 1 - LEVEL, min_seeds: int = MIN_SEEDS,
            margin: float = 0.0) -> Verdict:
    """The rule's reading of "A beats B" from per-seed differences A - B (and a paired test).

    * "not established": fewer than ``min_seeds`` seeds;
    * "met": every seed's difference has the right sign and beats ``margin``, and, when a
      paired test over the pooled items is given, it is significant at ``alpha`` with an
      interval that excludes ``margin`` on the right side;
    * "missed": the mean difference is on the wrong side and the paired test (when given)
      is significant, or every seed is on the wrong side;
    * "not separable": anything else (the seeds or the interval straddle the margin).
    """
    def oriented(x: float) -> float:  # "better" is positive
        return float(x) if higher_is_better else -float(x)

    d = [oriented(x) - margin for x in per_seed_diffs]
    n = len(d)
    if n < min_seeds:
        return Verdict("not established", f"{n} seed(s) < {min_seeds}")
    m, s = mean_std(d)
    desc = f"{n} seeds, advantage over the margin {m:+.4g} ± {s:.3g}"
    if paired is None:
        if all(x > 0 for x in d):
            return Verdict("met", desc)
        if all(x < 0 for x in d):
            return Verdict("missed", desc)
        return Verdict("not separable", desc)
    lo, hi = sorted([oriented(paired.diff.lo) - margin, oriented(paired.diff.hi) - margin])
    desc += f"; {paired.test} p = {paired.p_value:.3g} over {paired.n} paired items"
    if all(x > 0 for x in d) and paired.p_value < alpha and lo > 0:
        return Verdict("met", desc)
    if all(x < 0 for x in d) or (m < 0 and paired.p_value < alpha and hi < 0):
        return Verdict("missed", desc)
    return Verdict("not separable", desc)


@dataclass(frozen=True)
class Spread:
    """A timing over repeats: median, min, max and the repeats themselves."""

    median: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}g} [{self.lo:.{digits}g}-{self.hi:.{digits}g}] (n={self.n})"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.lo, "max": self.hi, "n": self.n}


def spread(values: Sequence[float]) -> Spread:
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("spread of no values")
    return Spread(statistics.median(xs), xs[0], xs[-1], len(xs))


def ratio_spread(num: Sequence[float], den: Sequence[float]) -> Spread:
    """Spread of the per-repeat ratios num[i] / den[i] (each pair measured back to back)."""
    if len(num) != len(den):
        raise ValueError("ratio_spread needs paired repeats")
    return spread([a / b for a, b in zip(num, den)])


__all__ = [
    "LEVEL", "MIN_SEEDS", "Interval", "PairedResult", "Spread", "Verdict", "accuracy_ci",
    "binom_two_sided", "bootstrap_ci", "fmt_mean_std", "mcnemar_exact", "mean_std",
    "paired_bootstrap", "ratio_spread", "sign_flip_p", "spread", "t_interval", "verdict",
]
