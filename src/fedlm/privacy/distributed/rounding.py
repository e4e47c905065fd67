"""Conditional randomised rounding to the integer grid, and the norms it can reach.

Kairouz, Liu and Steinke 2021 (arXiv:2102.06387, Algorithm 1 and Theorem 1): after
scaling by ``1 / gamma`` a client rounds each coordinate up with probability equal to its
fractional part (so the rounding is unbiased), and repeats the whole rounding until the
rounded vector's L2 norm is at most

    Delta_2 = min( c' + sqrt(D),
                   sqrt( c'^2 + D / 4 + sqrt(2 log(1/beta)) * (c' + sqrt(D) / 2) ) )

where ``c' = c / gamma`` is the clip norm in integer units and ``D`` the (padded)
dimension. The first term holds for every rounding (each coordinate moves by less than
1); the second holds with probability at least ``1 - beta`` for one rounding (the
paper's concentration bound; ``beta = 0`` drops it). ``Delta_2`` is the L2 sensitivity
that the accountant uses, so the retry loop is what makes the bound a guarantee rather
than a high-probability statement. Integer vectors also satisfy ``||v||_1 <= ||v||_2^2``
(``|v_j| <= v_j^2``) and ``||v||_1 <= sqrt(D) ||v||_2``, giving the L1 sensitivity
``Delta_1 = Delta_2 * min(sqrt(D), Delta_2)``.
"""

from __future__ import annotations

import math

import numpy as np

from fedlm.errors import ConfigError, FedlmError


def rounded_l2_bound(l2: float, dim: int, beta: float) -> float:
    """``Delta_2``: the L2 bound after conditional rounding (Kairouz et al. 2021, Thm. 1).

    Args:
        l2: ``c / gamma``, the L2 norm bound of the scaled vector, in integer units (> 0).
        dim: ``D``, the length of the rounded vector (after padding).
        beta: conditional rounding parameter in [0, 1); 0 means "no conditioning" and
            gives the deterministic bound ``l2 + sqrt(D)``.

    Returns:
        The bound, in integer units.
    """
    _check_beta(beta)
    if not (math.isfinite(l2) and l2 > 0):
        raise ConfigError(f"the scaled clip norm must be a positive finite number, got {l2!r}")
    if int(dim) != dim or dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}")
    always = l2 + math.sqrt(dim)
    if beta == 0:
        return always
    likely = l2**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (l2 + math.sqrt(dim) / 2.0)
    return min(always, math.sqrt(likely))


def rounded_l1_bound(l2_rounded: float, dim: int) -> float:
    """``Delta_1 = Delta_2 * min(sqrt(D), Delta_2)`` for an integer vector of L2 norm ``Delta_2``."""
    return l2_rounded * min(math.sqrt(dim), l2_rounded)


def randomized_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased randomised rounding: ``floor(x) + Bernoulli(x - floor(x))`` per coordinate.

    Args:
        x: float array of shape ``(D,)`` in integer units.
        rng: the client's private generator.

    Returns:
        int64 array of shape ``(D,)``; ``E[result] = x`` and ``|result - x| < 1``.
    """
    x = np.asarray(x, dtype=np.float64)
    low = np.floor(x)
    up = rng.random(x.shape) < (x - low)
    return low.astype(np.int64) + up


def conditional_randomized_round(
    x: np.ndarray, *, bound: float, rng: np.random.Generator, max_tries: int = 1000
) -> tuple[np.ndarray, int]:
    """Round ``x`` randomly until ``||rounded||_2 <= bound`` (Kairouz et al. 2021, Alg. 1).

    With ``bound = rounded_l2_bound(c / gamma, D, beta)`` and ``||x||_2 <= c / gamma``,
    each try succeeds with probability at least ``1 - beta``, so the expected number of
    tries is at most ``1 / (1 - beta)`` (about 2.5 for TFF's default ``beta = e^-0.5``).

    Args:
        x: float array of shape ``(D,)``, already scaled to integer units.
        bound: the L2 bound in integer units (see :func:`rounded_l2_bound`).
        rng: the client's private generator.
        max_tries: give up after this many roundings.

    Returns:
        ``(rounded, tries)``: int64 array of shape ``(D,)`` with L2 norm ``<= bound``, and
        the number of roundings drawn.

    Raises:
        FedlmError: no rounding met the bound in ``max_tries`` tries (the input was not
            clipped to the norm the bound was computed for).
    """
    bound_sq = float(bound) ** 2
    for tries in range(1, max_tries + 1):
        rounded = randomized_round(x, rng)
        as_float = rounded.astype(np.float64)
        if float(as_float @ as_float) <= bound_sq:
            return rounded, tries
    norm = float(np.linalg.norm(np.asarray(x, dtype=np.float64)))
    raise FedlmError(
        f"conditional rounding found no rounding with L2 norm <= {bound:.6g} in {max_tries} "
        f"tries (input norm {norm:.6g}); clip the input to the norm the bound was computed for"
    )


def _check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
        raise ConfigError(
            f"beta must be in [0, 1), got {beta!r}; TFF uses exp(-0.5), 0 disables conditioning"
        )


__all__ = [
    "conditional_randomized_round",
    "randomized_round",
    "rounded_l1_bound",
    "rounded_l2_bound",
]
