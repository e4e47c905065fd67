"""Privacy auditing with one training run (Steinke, Nasr and Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846): ``m``
canaries are each included in training independently with probability 1/2 (``S_i``).
After training the auditor scores every canary (higher: more likely included), guesses
"included" for the ``k+`` highest scores and "excluded" for the ``k-`` lowest, and
abstains on the rest. If training is ``(epsilon, delta)``-DP, the number ``W`` of correct
guesses among the ``r = k+ + k-`` made satisfies, for every ``v``,

    P[W >= v] <= P[Bin(r, q) >= v] + 2 m delta * max_{i = 1..v} P[v > Bin(r, q) >= v - i] / i,
    q = e^epsilon / (1 + e^epsilon),

i.e. an ``epsilon``-DP algorithm cannot guess better than randomised response with
accuracy ``q`` (the binomial tail), plus the paper's ``delta`` term. This right-hand side
is the p-value of the null hypothesis "the training run is ``(epsilon, delta)``-DP" given
``v`` observed correct guesses (:func:`audit_p_value`, as in the paper's Appendix D).
The empirical lower bound at confidence ``1 - p`` is the edge of the set of ``epsilon``
whose p-value is below ``p`` (:func:`audit_epsilon_lower_bound`, a search over
``epsilon``); rejecting ``(epsilon, delta)``-DP also rejects every smaller ``epsilon``,
so any value checked to be rejected is a valid bound, even where the p-value (whose
``delta`` term need not be monotone) wiggles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, gammaln, log_expit
from scipy.stats import binom

from fedlm.errors import ConfigError

# Fractions of m tried for k+ and k- by :func:`one_run_audit` when no grid is given.
DEFAULT_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def audit_p_value(correct: int, guesses: int, *, m: int, epsilon: float, delta: float) -> float:
    """p-value of "``(epsilon, delta)``-DP" after ``correct`` of ``guesses`` right.

    Args:
        correct: ``v``, the number of correct guesses.
        guesses: ``r = k+ + k-``, the number of guesses (abstentions excluded).
        m: the number of canaries (each included with probability 1/2).
        epsilon: the null hypothesis' ``epsilon >= 0``.
        delta: the null hypothesis' ``delta`` in [0, 1].

    Returns:
        An upper bound on ``P[W >= correct]`` under the null, capped at 1.
    """
    _check_counts(correct, guesses, m)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if not 0.0 <= delta <= 1.0:
        raise ConfigError(f"delta must be in [0, 1], got {delta!r}")
    v, r = int(correct), int(guesses)
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomised response
    tail = float(binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # window[i-1] = P[v > Bin(r, q) >= v - i] for i = 1..v: cumulative from k = v-1 down.
    k = np.arange(v - 1, -1, -1, dtype=np.float64)  # (v,) k = v-1, ..., 0
    log_pmf = (
        gammaln(r + 1.0)
        - gammaln(k + 1.0)
        - gammaln(r - k + 1.0)
        + k * log_expit(epsilon)  # log q
        + (r - k) * log_expit(-epsilon)  # log (1 - q)
    )
    window = np.cumsum(np.exp(log_pmf))
    worst = float(np.max(window / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * worst, 1.0)


def audit_epsilon_lower_bound(
    correct: int,
    guesses: int,
    *,
    m: int,
    delta: float,
    confidence: float = 0.95,
    tol: float = 1e-6,
) -> float:
    """Largest ``epsilon`` that the audit rejects at ``confidence`` (0.0 if none).

    With probability at least ``confidence`` over the canaries' inclusion, a training run
    that is ``(epsilon, delta)``-DP yields a bound ``<= epsilon``.

    Args:
        correct, guesses, m: as for :func:`audit_p_value`.
        delta: the ``delta`` the run claims (e.g. the accountant's).
        confidence: ``1 - p`` in (0, 1), e.g. 0.95.
        tol: absolute precision of the returned epsilon (the result errs low).

    Returns:
        The empirical lower bound on epsilon.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}; use e.g. 0.95")
    p = 1.0 - confidence

    def rejected(eps: float) -> bool:
        return audit_p_value(correct, guesses, m=m, epsilon=eps, delta=delta) < p

    if not rejected(0.0):
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: rejected(lo), not rejected(hi)
    while rejected(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:  # unreachable for finite counts; guards a degenerate input
            return lo
    # Brent's method on p(eps) - p finds the edge in a few steps; the answer must itself
    # be rejected, so step just below the root (and bisect if the p-value is not monotone).
    root = brentq(
        lambda e: audit_p_value(correct, guesses, m=m, epsilon=e, delta=delta) - p,
        lo,
        hi,
        xtol=tol / 4,
    )
    candidate = max(lo, root - tol / 2)
    if rejected(candidate):
        return candidate
    hi = candidate
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if rejected(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclasses.dataclass(frozen=True)
class OneRunAuditResult:
    """The outcome of :func:`one_run_audit`.

    Attributes:
        epsilon_lower_bound: the empirical lower bound at ``confidence``.
        k_plus, k_minus: the guess counts that gave it.
        correct, guesses: ``v`` and ``r`` at that choice.
        m: number of canaries.
        delta, confidence: as given.
        choices: number of ``(k+, k-)`` pairs tried; each was tested at level
            ``(1 - confidence) / choices`` (Bonferroni), so the maximum is valid at
            ``confidence``.
    """

    epsilon_lower_bound: float
    k_plus: int
    k_minus: int
    correct: int
    guesses: int
    m: int
    delta: float
    confidence: float
    choices: int


def one_run_audit(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    k_plus: int | None = None,
    k_minus: int | None = None,
    grid: Sequence[int] | None = None,
) -> OneRunAuditResult:
    """Audit one training run from canary scores and inclusion bits.

    Guesses "included" for the ``k+`` highest scores and "excluded" for the ``k-``
    lowest (ties broken by index, which does not depend on the inclusion bits).

    Choosing ``k+, k-``: pass both to test one choice fixed in advance (e.g. picked on a
    held-out split of canaries) at the full confidence. Otherwise every pair from ``grid``
    (default: the fractions ``DEFAULT_FRACTIONS`` of ``m``) with ``0 < k+ + k- <= m`` is
    tried and the best bound reported, each pair tested at level
    ``(1 - confidence) / pairs`` (Bonferroni correction for the sweep). Steinke et al.
    sweep ``k+`` and ``k-`` and report the best without such a correction; the correction
    costs a little (about ``sqrt(2 log pairs)`` standard errors) and keeps the stated
    confidence honest.

    Args:
        scores: shape ``(m,)``, higher means "more likely included" (e.g. minus the loss).
        included: shape ``(m,)``, whether each canary was in training (drawn with
            probability 1/2, independently of everything else).
        delta: the run's claimed ``delta``.
        confidence: e.g. 0.95.
        k_plus, k_minus: a fixed choice (both or neither).
        grid: candidate values for ``k+`` and ``k-`` when sweeping.

    Returns:
        The best bound and the choice that gave it.
    """
    s = np.asarray(scores, dtype=np.float64)
    bits = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != bits.shape or s.size == 0:
        raise ConfigError(
            f"scores and included must be 1-D of the same non-zero length, got shapes "
            f"{s.shape} and {bits.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ConfigError("scores contain NaN or inf; score every canary with a finite number")
    m = s.size
    if (k_plus is None) != (k_minus is None):
        raise ConfigError("give both k_plus and k_minus, or neither to sweep a grid")
    if k_plus is not None and k_minus is not None:
        pairs = [(int(k_plus), int(k_minus))]
    else:
        ks = sorted({round(f * m) for f in DEFAULT_FRACTIONS} if grid is None else set(grid))
        pairs = [(a, b) for a in ks for b in ks if 0 < a + b <= m]
    if not pairs:
        raise ConfigError(f"grid={grid!r} has no pair with 0 < k_plus + k_minus <= m={m}")
    for a, b in pairs:
        if a < 0 or b < 0 or a + b > m or a + b == 0:
            raise ConfigError(f"need k_plus, k_minus >= 0 and 0 < k_plus + k_minus <= m={m}")
    order = np.argsort(-s, kind="stable")  # (m,) canaries from highest to lowest score
    hits_top = np.concatenate(([0], np.cumsum(bits[order])))  # included among the top k
    hits_bottom = np.concatenate(([0], np.cumsum(~bits[order][::-1])))  # excluded, bottom k
    level = 1.0 - (1.0 - confidence) / len(pairs)
    # The delta = 0 bound is an upper bound on the bound with delta (the p-value only
    # grows with delta) and is cheap, so pairs that cannot win are skipped.
    counts = [(int(hits_top[a] + hits_bottom[b]), a, b) for a, b in pairs]
    optimistic = [
        audit_epsilon_lower_bound(v, a + b, m=m, delta=0.0, confidence=level) for v, a, b in counts
    ]
    best: OneRunAuditResult | None = None
    for i in np.argsort(-np.asarray(optimistic), kind="stable"):
        v, a, b = counts[i]
        if best is not None and optimistic[i] <= best.epsilon_lower_bound:
            break
        eps = audit_epsilon_lower_bound(v, a + b, m=m, delta=delta, confidence=level)
        if best is None or eps > best.epsilon_lower_bound:
            best = OneRunAuditResult(eps, a, b, v, a + b, m, delta, confidence, len(pairs))
    if best is None:  # unreachable: pairs is not empty
        raise ConfigError("no (k_plus, k_minus) choice to test")
    return best


def _check_counts(correct: int, guesses: int, m: int) -> None:
    if not (0 <= correct <= guesses <= m):
        raise ConfigError(
            f"need 0 <= correct <= guesses <= m, got correct={correct}, guesses={guesses}, m={m}"
        )


__all__ = [
    "DEFAULT_FRACTIONS",
    "OneRunAuditResult",
    "audit_epsilon_lower_bound",
    "audit_p_value",
    "one_run_audit",
]
