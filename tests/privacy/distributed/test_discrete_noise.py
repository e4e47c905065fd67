import math

import numpy as np
import pytest
from scipy.stats import skellam

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.discrete_noise import (
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    sample_discrete_gaussian,
    sample_skellam,
)

N = 100_000


def test_discrete_gaussian_variance_hand_worked():
    # sigma = 0.5: weights exp(-k^2 / 0.5) = exp(-2 k^2); terms beyond |k| = 3 are < 1e-12.
    e2, e8, e18 = math.exp(-2.0), math.exp(-8.0), math.exp(-18.0)
    expected = 2 * (1 * e2 + 4 * e8 + 9 * e18) / (1 + 2 * (e2 + e8 + e18))
    assert expected == pytest.approx(0.2150127, rel=1e-6)
    assert discrete_gaussian_variance(0.5) == pytest.approx(expected, rel=1e-11)
    # For sigma >= 1 the variance is sigma^2 up to 8 pi^2 sigma^2 exp(-2 pi^2 sigma^2).
    gap = 1.0 - discrete_gaussian_variance(1.0)
    assert gap == pytest.approx(8 * math.pi**2 * math.exp(-2 * math.pi**2), rel=1e-3)
    assert discrete_gaussian_variance(3.0) == pytest.approx(9.0, rel=1e-14)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0, 20.0, 1000.0])
def test_discrete_gaussian_moments(sigma):
    x = sample_discrete_gaussian(N, sigma=sigma, rng=np.random.default_rng(int(sigma * 10)))
    assert x.dtype == np.int64 and x.shape == (N,)
    var = discrete_gaussian_variance(sigma)
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    # The sample variance of a near-Gaussian has relative standard error sqrt(2 / N) = 0.45%.
    assert x.var() == pytest.approx(var, rel=5 * math.sqrt(2 / N))


def test_discrete_gaussian_pmf_matches_frequencies():
    sigma = 1.5
    x = sample_discrete_gaussian(N, sigma=sigma, rng=np.random.default_rng(1))
    support = np.arange(-6, 7)
    freq = np.array([(x == k).mean() for k in support])
    pmf = discrete_gaussian_pmf(support, sigma=sigma)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-4)  # |k| > 6 holds ~1e-4 of the mass
    np.testing.assert_array_less(np.abs(freq - pmf), 5 * np.sqrt(pmf * (1 - pmf) / N) + 1e-4)


def test_discrete_gaussian_shape_and_zero():
    assert sample_discrete_gaussian((3, 4), sigma=2.0, rng=np.random.default_rng(0)).shape == (3, 4)
    assert not sample_discrete_gaussian(10, sigma=0.0, rng=np.random.default_rng(0)).any()
    with pytest.raises(ConfigError, match="sigma"):
        sample_discrete_gaussian(3, sigma=-1.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("variance", [0.7, 9.0, 2500.0])
def test_skellam_matches_scipy(variance):
    x = sample_skellam(N, variance=variance, rng=np.random.default_rng(2))
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * math.sqrt(variance / N)
    assert x.var() == pytest.approx(variance, rel=6 * math.sqrt(2 / N) + 1e-3)
    # Kolmogorov-Smirnov distance to Sk(0, mu) = Poisson(mu/2) - Poisson(mu/2) over the
    # observed integers; 1.63 / sqrt(N) is the 1% critical value (conservative when discrete).
    ks = np.unique(x)
    ecdf = np.searchsorted(np.sort(x), ks, side="right") / N
    cdf = skellam.cdf(ks, variance / 2, variance / 2)
    assert np.max(np.abs(ecdf - cdf)) < 1.63 / math.sqrt(N)


def test_skellam_zero_and_bad_variance():
    assert not sample_skellam(5, variance=0.0, rng=np.random.default_rng(0)).any()
    with pytest.raises(ConfigError, match="variance"):
        sample_skellam(5, variance=float("inf"), rng=np.random.default_rng(0))
