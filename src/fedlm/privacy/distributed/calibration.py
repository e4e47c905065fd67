"""Choosing the ring size, the granularity and the noise: the modular wrap-around bound.

The server decodes correctly when every coordinate of the integer sum
``S_j = sum_i (rounded_ij + noise_ij)`` lies in ``[-2^(b-1), 2^(b-1))``. Write
``S_j = A_j + R_j + N_j`` with ``A = U (sum_i clip(x_i)) / gamma`` the rotated signal,
``R_j`` the rounding errors and ``N_j`` the summed noise (integer units):

* ``|R_j| < n``: each client moves each coordinate by less than one step;
* ``A_j`` is a Rademacher sum over the public random signs, sub-Gaussian with variance
  proxy ``||sum_i clip(x_i)||^2 / (gamma^2 D) <= (n c / gamma)^2 / D`` (Kairouz et al.
  2021, Sec. 4.2; pass ``signal_norm`` to assume a smaller norm of the sum, such as TFF's
  ``sqrt(n) c`` heuristic);
* ``N_j``: the sum of ``n`` discrete Gaussians of scale ``s`` is ``n s^2``-sub-Gaussian
  (each ``N_Z(0, s^2)`` is ``s^2``-sub-Gaussian, Canonne, Kamath and Steinke 2020); the
  Skellam ``Sk(0, mu)`` has log-MGF ``mu (cosh t - 1)``.

``A`` and ``N`` are independent, so the Chernoff bound gives, with ``a = 2^(b-1) - n``,

    P[wrap] <= 2 D exp( min_{t > 0} -t a + t^2 v / 2 + mu (cosh t - 1) )

(``v`` the sub-Gaussian proxies, ``mu`` the Skellam variance, a union bound over the
``D`` coordinates). This is a rigorous version of the "``k`` standard deviations fit in
``b`` bits" rule that Kairouz et al. (Sec. 4) and TFF use to pick ``gamma``. :func:`distributed_dp_params` then
picks the finest granularity ``gamma`` whose calibrated noise still fits.
"""

from __future__ import annotations

import dataclasses
import math

from scipy.optimize import brentq

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.accounting import calibrate_noise_stddev
from fedlm.privacy.distributed.mechanism import MAX_BITS, DistributedDpParams
from fedlm.privacy.distributed.rotation import padded_dim

DEFAULT_WRAP_PROBABILITY = 1e-9


def wraparound_probability(
    params: DistributedDpParams,
    *,
    signal_norm: float | None = None,
    cohort_size: int | None = None,
) -> float:
    """Upper bound on the probability that any coordinate of the sum wraps mod ``2^b``.

    Args:
        params: the round's parameters.
        signal_norm: bound on ``||sum_i clip(x_i)||_2`` in update units; default
            ``k * clip``, which always holds.
        cohort_size: ``k``, the number of vectors actually summed, each with the noise
            share of ``params`` (default ``params.num_clients``). Under Poisson sampling
            the cohort varies: pass a high quantile of its size.

    Returns:
        A probability in [0, 1] (1.0 when even the rounding errors may not fit).
    """
    n = params.num_clients if cohort_size is None else int(cohort_size)
    if n < 1:
        raise ConfigError(f"cohort_size must be >= 1, got {cohort_size!r}")
    a = float(2 ** (params.bits - 1) - n)  # room left after the rounding errors
    if a <= 0:
        return 1.0
    norm = n * params.clip if signal_norm is None else float(signal_norm)
    if not (math.isfinite(norm) and norm >= 0):
        raise ConfigError(f"signal_norm must be a finite number >= 0, got {signal_norm!r}")
    v = (norm / params.gamma) ** 2 / params.padded_dim  # sub-Gaussian proxy of A_j
    mu = 0.0
    if params.mechanism == "ddgauss":
        v += n * params.local_scale**2
    else:
        mu = n * params.local_scale**2  # Skellam variance of N_j
    if v == 0 and mu == 0:
        return 0.0
    log_p = math.log(2.0 * params.padded_dim) + _chernoff_exponent(a, v, mu)
    return min(1.0, math.exp(log_p)) if log_p < 0 else 1.0


def min_bits(
    params: DistributedDpParams,
    *,
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY,
    signal_norm: float | None = None,
) -> int:
    """The smallest ring size ``b`` (ignoring ``params.bits``) with wrap-around bound ``<= p``.

    Raises:
        ConfigError: not even ``b = 62`` suffices.
    """
    _check_probability(wrap_probability)
    for bits in range(2, MAX_BITS + 1):
        trial = dataclasses.replace(params, bits=bits)
        if wraparound_probability(trial, signal_norm=signal_norm) <= wrap_probability:
            return bits
    raise ConfigError(
        f"no ring of up to {MAX_BITS} bits keeps the wrap-around probability below "
        f"{wrap_probability:g}; coarsen gamma={params.gamma:g}"
    )


def distributed_dp_params(
    mechanism: str,
    *,
    clip: float,
    dim: int,
    num_clients: int,
    target_epsilon: float | None,
    delta: float,
    rounds: int,
    bits: int,
    sample_rate: float = 1.0,
    beta: float = math.exp(-0.5),
    wrap_probability: float = DEFAULT_WRAP_PROBABILITY,
    signal_norm: float | None = None,
    rel_tol: float = 0.02,
    noise_stddev: float | None = None,
    cohort_size: int | None = None,
) -> DistributedDpParams:
    """``(gamma, noise_stddev)`` for a ring of ``bits`` bits and a privacy target, as TFF does.

    For each candidate granularity ``gamma`` the total noise ``sigma`` is calibrated so
    that ``rounds`` rounds end at ``target_epsilon`` (:func:`calibrate_noise_stddev`);
    finer ``gamma`` means less rounding error but larger integers. Bisection on
    ``log gamma`` returns (within ``rel_tol``) the finest ``gamma`` whose wrap-around
    bound is at most ``wrap_probability``. TFF (``DistributedDpSumFactory``) makes the same
    trade with a ``k``-standard-deviations rule; this uses the bound of
    :func:`wraparound_probability`.

    Args:
        mechanism: "ddgauss" or "skellam".
        clip: ``c``, L2 clip norm of a client's update.
        dim: ``d``, the update's length.
        num_clients: ``n``, noise shares per round (the expected cohort under Poisson
            sampling, times the fraction assumed honest).
        target_epsilon, delta, rounds: the budget after ``rounds`` rounds.
        bits: ``b``, the SecAgg ring ``Z_{2^b}``.
        sample_rate: ``q``, Poisson sampling rate of clients.
        beta: conditional rounding parameter.
        wrap_probability: allowed probability that a round's sum wraps.
        signal_norm: see :func:`wraparound_probability`.
        rel_tol: relative precision of ``gamma``.
        noise_stddev: a fixed ``sigma`` instead of one calibrated to ``target_epsilon``
            (pass ``target_epsilon=None``); only ``gamma`` is chosen.
        cohort_size: the most clients a round may sum, for the wrap-around bound (default
            ``num_clients``; under Poisson sampling pass a high quantile of the cohort).

    Returns:
        The parameters; ``wraparound_probability`` of the result is ``<= wrap_probability``.

    Raises:
        ConfigError: the target is unreachable, or ``bits`` too small for ``n`` clients at
            any granularity.
    """
    _check_probability(wrap_probability)
    if 2 ** (bits - 1) <= (num_clients if cohort_size is None else max(int(cohort_size), num_clients)):
        raise ConfigError(
            f"bits={bits} cannot hold the rounding errors of {num_clients} clients (each adds "
            f"up to one step per coordinate; need 2^(bits-1) > {num_clients}); raise bits"
        )

    if (target_epsilon is None) == (noise_stddev is None):
        raise ConfigError("give exactly one of target_epsilon and noise_stddev to choose the parameters")
    most = num_clients if cohort_size is None else max(int(cohort_size), num_clients)

    def build(gamma: float) -> DistributedDpParams:
        if noise_stddev is not None:
            return DistributedDpParams(mechanism=mechanism, clip=clip, dim=dim, num_clients=num_clients, gamma=gamma,
                                       noise_stddev=noise_stddev, bits=bits, beta=beta)
        sigma = calibrate_noise_stddev(
            mechanism,
            target_epsilon,
            delta,
            rounds,
            clip=clip,
            gamma=gamma,
            num_clients=num_clients,
            dim=dim,
            beta=beta,
            sample_rate=sample_rate,
        )
        return DistributedDpParams(
            mechanism=mechanism,
            clip=clip,
            dim=dim,
            num_clients=num_clients,
            gamma=gamma,
            noise_stddev=sigma,
            bits=bits,
            beta=beta,
        )

    def fits(p: DistributedDpParams) -> bool:
        return wraparound_probability(p, signal_norm=signal_norm, cohort_size=most) <= wrap_probability

    # One step of clip / sqrt(D) puts a typical rotated coordinate within a few steps of 0.
    hi = clip / math.sqrt(padded_dim(dim))
    best = build(hi)
    while not fits(best):
        hi *= 4.0
        if hi > clip * 1e6:
            raise ConfigError(
                f"bits={bits} cannot hold the sum of {num_clients} clients at any granularity "
                f"(wrap-around probability above {wrap_probability:g}); raise bits (SecAgg "
                "modulus_bits) or plan fewer clients per round"
            )
        best = build(hi)
    lo = hi
    while True:  # bracket: fits(hi), not fits(lo)
        lo /= 4.0
        trial = build(lo)
        if not fits(trial):
            break
        hi, best = lo, trial
        if lo < clip * 1e-12:
            return best
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        trial = build(mid)
        if fits(trial):
            hi, best = mid, trial
        else:
            lo = mid
    return best


def _chernoff_exponent(a: float, v: float, mu: float) -> float:
    """``min_{t >= 0} -t a + t^2 v / 2 + mu (cosh t - 1)`` for ``a > 0`` (convex in t)."""

    def slope(t: float) -> float:
        return -a + t * v + (mu * math.sinh(t) if mu > 0 else 0.0)  # sinh(t) may overflow where mu = 0

    t_hi = math.inf
    if v > 0:
        t_hi = a / v
    if mu > 0:
        t_hi = min(t_hi, math.asinh(a / mu))
    t = brentq(slope, 0.0, t_hi, xtol=1e-14, rtol=1e-12) if slope(t_hi) > 0 else t_hi
    # cosh t - 1 = 2 sinh(t/2)^2 keeps precision for small t.
    return -t * a + t * t * v / 2.0 + (mu * 2.0 * math.sinh(t / 2.0) ** 2 if mu > 0 else 0.0)


def _check_probability(p: float) -> None:
    if not (math.isfinite(p) and 0.0 < p < 1.0):
        raise ConfigError(f"wrap_probability must be in (0, 1), got {p!r}; use e.g. 1e-9")


__all__ = [
    "DEFAULT_WRAP_PROBABILITY",
    "distributed_dp_params",
    "min_bits",
    "wraparound_probability",
]
