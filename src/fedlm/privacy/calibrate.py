"""The one search every noise calibration shares: the least noise whose epsilon fits a budget.

Epsilon falls as the noise grows, so the smallest noise with ``epsilon(x) <= target`` is
found by bracketing and then narrowing the bracket on ``log x`` (the noise spans orders of
magnitude). ``log epsilon`` is close to linear in ``log x`` over a bracket, so each step
interpolates that line (Illinois' regula falsi), aiming just inside the tolerance window;
each evaluation is an accountant run (up to seconds with PLD), and this takes about half
the evaluations plain bisection does.
Both the Gaussian accountant's noise multiplier
(:func:`fedlm.privacy.accountant.calibrate_noise_multiplier`) and the distributed
mechanisms' noise std (:func:`fedlm.privacy.distributed.accounting.calibrate_noise_stddev`)
are this search with their own ``epsilon``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedlm.errors import ConfigError


def least_noise(
    epsilon: Callable[[float], float],
    target: float,
    *,
    start: float,
    floor: float,
    ceiling: float,
    rel_tol: float,
    down: float = 1.25,
    up: float = 2.0,
    max_steps: int = 200,
) -> float:
    """The smallest ``x`` in ``[floor, ceiling]`` (up to ``rel_tol`` on epsilon) with ``epsilon(x) <= target``.

    The result ``x`` satisfies ``target (1 - rel_tol) <= epsilon(x) <= target``, unless even
    ``floor`` is under the target (then ``floor`` is returned).

    Args:
        epsilon: decreasing in ``x`` (the noise).
        target: the budget (> 0).
        start: where the bracket search starts (a good guess saves evaluations).
        floor, ceiling: the search range; ``epsilon(ceiling) <= target`` must hold (the
            caller checks reachability first, to word the error).
        rel_tol: how far under the target the result may land, in (0, 1).
        down, up: factors of the bracket walk below and above ``start``.
        max_steps: steps inside the bracket at most.

    Raises:
        ConfigError: invalid arguments.
    """
    if not (0 < rel_tol < 1 and 0 < floor <= ceiling and down > 1 and up > 1):
        raise ConfigError(
            f"least_noise needs 0 < rel_tol < 1, 0 < floor <= ceiling and factors > 1; got rel_tol={rel_tol!r}, "
            f"floor={floor!r}, ceiling={ceiling!r}, down={down!r}, up={up!r}"
        )
    x = min(max(start, floor), ceiling)
    e = epsilon(x)
    if e <= target:  # walk down until the budget is exceeded: [lo, hi] with eps(lo) > target >= eps(hi)
        hi, eps_hi = x, e
        while True:
            if hi <= floor:
                return floor
            lo = max(hi / down, floor)
            eps_lo = epsilon(lo)
            if eps_lo > target:
                break
            hi, eps_hi = lo, eps_lo
    else:  # walk up until it fits
        lo, eps_lo = x, e
        while True:
            hi = min(lo * up, ceiling)
            eps_hi = epsilon(hi)
            if eps_hi <= target:
                break
            if hi >= ceiling:
                raise ConfigError(f"epsilon({ceiling:g}) = {eps_hi:.4g} exceeds the target {target:g}")
            lo, eps_lo = hi, eps_hi
    # f(x) = log epsilon(x) - log aim, with the aim in the middle of the window
    # [target (1 - rel_tol), target]: f(lo) > 0 >= f(hi) would put the root inside it.
    aim = target * (1.0 - rel_tol / 2)

    def f(e: float) -> float:
        return math.log(e / aim) if 0 < e < math.inf else (math.inf if e > 0 else -math.inf)

    f_lo, f_hi = f(eps_lo), f(eps_hi)
    last = 0  # which end the previous step moved: Illinois halves the other end's f
    for _ in range(max_steps):
        if eps_hi >= target * (1.0 - rel_tol) or hi / lo < 1.0 + 1e-12:
            break
        a, b = math.log(lo), math.log(hi)
        if math.isfinite(f_lo) and math.isfinite(f_hi) and f_lo > f_hi:
            m = b - f_hi * (b - a) / (f_hi - f_lo)
            m = min(max(m, a + 0.02 * (b - a)), b - 0.02 * (b - a))  # strictly inside
        else:
            m = (a + b) / 2  # an infinite epsilon at lo: bisect
        mid = math.exp(m)
        e = epsilon(mid)
        if e <= target:
            hi, eps_hi, f_hi = mid, e, f(e)
            if last == -1:
                f_lo /= 2
            last = -1
        else:
            lo, f_lo = mid, f(e)
            if last == 1:
                f_hi /= 2
            last = 1
    return hi


__all__ = ["least_noise"]
