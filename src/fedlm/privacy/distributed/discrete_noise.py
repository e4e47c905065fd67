"""Integer-valued noise for distributed DP: the discrete Gaussian and the Skellam.

* Discrete Gaussian ``N_Z(0, sigma^2)``: ``P[X = x]`` proportional to
  ``exp(-x^2 / (2 sigma^2))`` on the integers (Canonne, Kamath and Steinke 2020, "The
  Discrete Gaussian for Differential Privacy"). Its variance is below ``sigma^2`` by a
  relative ``~8 pi^2 sigma^2 exp(-2 pi^2 sigma^2)``: ``2e-7`` at ``sigma = 1``, negligible
  from ``sigma = 2``. The sampler is their Algorithm 3,
  vectorised: propose ``Y`` from the discrete Laplace with scale ``t = floor(sigma) + 1``
  (``P[Y = y]`` proportional to ``exp(-|y| / t)``, drawn as the difference of two
  geometric variables) and accept with probability
  ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``. The paper performs these Bernoulli trials
  in exact rational arithmetic; here they use float64, so each probability is exact up to
  float64 rounding (relative ``2^-52``), which moves the output distribution by a total
  variation of order ``1e-16`` per draw. The sum of ``n`` discrete Gaussians is *not* a
  discrete Gaussian; the accountant pays for that with the ``tau`` term of Kairouz, Liu
  and Steinke 2021.
* Skellam ``Sk(0, mu)`` with variance ``mu``: ``Poisson(mu / 2) - Poisson(mu / 2)``
  (Agarwal, Kairouz and Liu 2021, "The Skellam Mechanism for Differentially Private
  Federated Learning"). Closed under summation: ``n`` shares of variance ``mu / n`` sum to
  exactly ``Sk(0, mu)``.

The generators are NumPy ``Generator`` objects (PCG64 by default), which are not
cryptographically secure: the noise seed is a client secret, and a deployment should seed
it from ``secrets.randbits(128)`` (see ``privacy.noise_seed`` in docs/privacy.md).
"""

from __future__ import annotations

import math

import numpy as np

from fedlm.errors import ConfigError

Shape = int | tuple[int, ...]


def sample_discrete_gaussian(shape: Shape, *, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent draws from ``N_Z(0, sigma^2)`` (Canonne et al. 2020, Alg. 3).

    Args:
        shape: output shape.
        sigma: scale parameter ``sigma >= 0`` in integer units (0 gives zeros).
        rng: the private noise generator.

    Returns:
        int64 array of ``shape``.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"sigma must be a finite number >= 0, got {sigma!r}")
    size = int(np.prod(shape, dtype=np.int64))
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of the geometric: 1 - exp(-1/t)
    centre = sigma * sigma / t
    filled = 0
    while filled < size:
        # The acceptance rate is above 0.4 for this t (about 0.75 for sigma >= 2).
        k = 3 * (size - filled) + 64
        y = rng.geometric(p, k) - rng.geometric(p, k)  # (k,) discrete Laplace with scale t
        accept = rng.random(k) < np.exp(-((np.abs(y) - centre) ** 2) / (2.0 * sigma * sigma))
        got = y[accept][: size - filled]
        out[filled : filled + got.size] = got
        filled += got.size
    return out.reshape(shape)


def sample_skellam(shape: Shape, *, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Independent draws from ``Sk(0, variance) = Poisson(variance/2) - Poisson(variance/2)``.

    Args:
        shape: output shape.
        variance: ``mu >= 0`` in integer units squared (0 gives zeros).
        rng: the private noise generator.

    Returns:
        int64 array of ``shape``.
    """
    if not (math.isfinite(variance) and variance >= 0):
        raise ConfigError(f"variance must be a finite number >= 0, got {variance!r}")
    if variance == 0:
        return np.zeros(shape, dtype=np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, shape).astype(np.int64) - rng.poisson(lam, shape).astype(np.int64)


def discrete_gaussian_pmf(x: np.ndarray, *, sigma: float) -> np.ndarray:
    """``P[N_Z(0, sigma^2) = x]`` for an integer array ``x`` (``sigma > 0``).

    The normaliser ``sum_k exp(-k^2 / (2 sigma^2))`` is summed over
    ``|k| <= 40 sigma + 10``, where the rest is below ``exp(-800)``.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"sigma must be a positive finite number, got {sigma!r}")
    k = np.arange(-math.ceil(40 * sigma + 10), math.ceil(40 * sigma + 10) + 1, dtype=np.float64)
    norm = np.exp(-(k**2) / (2.0 * sigma * sigma)).sum()
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-(x**2) / (2.0 * sigma * sigma)) / norm


def discrete_gaussian_variance(sigma: float) -> float:
    """The exact variance of ``N_Z(0, sigma^2)`` (slightly below ``sigma^2`` for small sigma)."""
    if sigma == 0:
        return 0.0
    k = np.arange(-math.ceil(40 * sigma + 10), math.ceil(40 * sigma + 10) + 1, dtype=np.float64)
    return float((k**2 * discrete_gaussian_pmf(k, sigma=sigma)).sum())


__all__ = [
    "discrete_gaussian_pmf",
    "discrete_gaussian_variance",
    "sample_discrete_gaussian",
    "sample_skellam",
]
