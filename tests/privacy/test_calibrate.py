"""The least-noise search every calibration shares: it lands in the tolerance window, cheaply.

Hand-worked: for epsilon(x) = c / x**p the least x with epsilon <= t is (c / t) ** (1 / p),
so the result must lie in [(c / t) ** (1 / p), (c / (t (1 - tol))) ** (1 / p)].
"""

from __future__ import annotations

import math

import pytest

from fedlm.errors import ConfigError
from fedlm.privacy.calibrate import least_noise


def _counted(fn):
    calls = []

    def wrapped(x: float) -> float:
        calls.append(x)
        return fn(x)

    return wrapped, calls


@pytest.mark.parametrize(("c", "p", "start"), [(3.0, 1.0, 1.0), (50.0, 2.0, 0.2), (0.5, 0.7, 40.0), (8.0, 3.0, 1.0)])
def test_a_power_law_lands_in_the_window_in_a_few_evaluations(c, p, start):
    target, tol = 2.0, 0.01
    eps, calls = _counted(lambda x: c / x**p)
    x = least_noise(eps, target, start=start, floor=1e-3, ceiling=1e3, rel_tol=tol)
    assert (c / target) ** (1 / p) <= x <= (c / (target * (1 - tol))) ** (1 / p) * (1 + 1e-12)
    assert target * (1 - tol) <= eps(x) <= target
    # log epsilon is a line in log x here: the interpolation finds it at once (plain
    # bisection from a bracket of ratio 1.25-2 needs 5-7 more evaluations for 1%).
    walk = math.ceil(abs(math.log(x / start)) / math.log(1.25)) + 1
    assert len(calls) <= walk + 3


def test_a_kinked_epsilon_still_lands_in_the_window():
    # Flat, then a cliff, then flat: interpolation is badly wrong here, the bracket saves it.
    def eps(x: float) -> float:
        return math.inf if x < 0.5 else 10.0 if x < 1.0 else 1.0 + 0.9 * math.exp(-50 * (x - 1.0))

    x = least_noise(eps, 1.5, start=4.0, floor=0.01, ceiling=100.0, rel_tol=0.01)
    assert 1.5 * 0.99 <= eps(x) <= 1.5


def test_an_infinite_epsilon_at_the_low_end_bisects():
    def eps(x: float) -> float:
        return math.inf if x < 0.3 else 1.0 / x

    x = least_noise(eps, 2.0, start=0.2, floor=0.01, ceiling=100.0, rel_tol=0.01)
    assert 2.0 * 0.99 <= eps(x) <= 2.0


def test_a_target_met_even_at_the_floor_returns_the_floor():
    assert least_noise(lambda x: 0.1, 1.0, start=5.0, floor=0.5, ceiling=10.0, rel_tol=0.01) == 0.5


def test_an_unreachable_target_is_refused():
    with pytest.raises(ConfigError, match="exceeds the target"):
        least_noise(lambda x: 10.0, 1.0, start=1.0, floor=0.5, ceiling=4.0, rel_tol=0.01)
