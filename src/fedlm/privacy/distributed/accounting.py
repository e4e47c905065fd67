"""Renyi-DP accounting of the distributed discrete Gaussian and the distributed Skellam.

Units. ``clip`` (``c``), ``gamma`` and ``noise_stddev`` (``sigma``, the std of the *total*
noise in the sum) are in the units of the update; the bounds below are in integer units,
after scaling by ``1 / gamma``: ``c' = c / gamma``, ``sigma' = sigma / gamma``, each of
the ``n`` clients adds noise of scale ``s = sigma' / sqrt(n)``. ``D`` is the padded
dimension. Neighbouring cohorts differ by one client's (rotated, rounded) vector, whose
norms are at most ``Delta_2 = rounded_l2_bound(c', D, beta)`` and
``Delta_1 = rounded_l1_bound(Delta_2, D)`` (:mod:`.rounding`), while the ``n`` noise
shares are summed (as in Kairouz et al. and TFF: a client that drops out or withholds its
share lowers the noise; plan ``n`` as the number of honest shares).

* Distributed discrete Gaussian (Kairouz, Liu and Steinke 2021, arXiv:2102.06387,
  Proposition 14 and Theorem 1 as numbered in the arXiv version): the sum of ``n`` independent ``N_Z(0, s^2)`` per
  coordinate satisfies, at every order ``alpha > 1``,

      eps(alpha) = min( alpha/2 * Delta_2^2/sigma'^2 + tau D,
                        alpha/2 * (Delta_2^2/sigma'^2 + 2 tau Delta_1/sigma' + tau^2 D),
                        alpha/2 * (Delta_2/sigma' + tau sqrt(D))^2 ),
      tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1)),

  where ``tau`` pays for the sum of discrete Gaussians not being a discrete Gaussian
  (``tau = 0`` for one client, and it vanishes quickly once ``s >= 1``).
* Distributed Skellam (Agarwal, Kairouz and Liu 2021, "The Skellam Mechanism for
  Differentially Private Federated Learning", the multi-dimensional Skellam RDP bound):
  the sum of the shares is exactly ``Sk(0, mu)`` with ``mu = sigma'^2`` and

      eps(alpha) = alpha Delta_2^2 / (2 mu)
                   + min( ((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu) ).

* Poisson subsampling of clients at rate ``q``, at integer orders (the form of Zhu and Wang
  2019, "Poisson Subsampled Renyi Differential Privacy", Theorem 6):

      eps_q(alpha) = 1/(alpha-1) log( sum_{l=0}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^{(l-1) eps(l)} ),

  taking the smaller of it and the unsampled ``eps(alpha)`` at each order. With ``P`` the
  output without the client and ``Q`` with it, the sum is the binomial expansion of
  ``E_P[(1 - q + q Q/P)^alpha]`` with ``e^{(l-1) eps(l)} >= E_P[(Q/P)^l]``: an upper bound on
  the "remove" direction ``D_alpha((1-q) P + q Q || P)``, and exact for the Gaussian (it is
  dp-accounting's integer-order formula). The "add" direction ``D_alpha(P || (1-q) P + q Q)``
  is never larger when the pair is *symmetric*, a bijection of outputs carrying ``P`` to
  ``Q`` and ``Q`` to ``P``. Both mechanisms' pairs are: the summed noise (discrete
  Gaussians, or a Skellam) is symmetric about 0 and the two sums differ by one fixed integer
  vector ``v``, so ``y -> 2m + v - y`` swaps them, modulo ``2^b`` too (the proof is in
  docs/privacy.md). Without symmetry the add direction can be the larger, which is why Zhu
  and Wang's general bound (their Theorem 5, and the authors' accounting code) puts a factor
  3 on the terms ``l >= 3``; on the ``dp`` example that costs 1.106x the noise.

Rounds compose by adding RDP; ``(epsilon, delta)`` comes from dp-accounting's RDP
conversion (``dp_accounting.rdp.compute_epsilon``, the improved conversion of Canonne,
Kamath and Steinke 2020, Prop. 12). The per-release formulas are those of the authors'
accounting code (google-research/federated, ``distributed_dp/accounting_utils.py``), whose
subsampling uses the general bound; TFF's ``DistributedDpSumFactory`` runs the same two
mechanisms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.rdp import compute_epsilon
from scipy.special import gammaln

from fedlm.errors import ConfigError
from fedlm.privacy.calibrate import least_noise
from fedlm.privacy.distributed.rotation import padded_dim
from fedlm.privacy.distributed.rounding import rounded_l1_bound, rounded_l2_bound

MECHANISMS = ("ddgauss", "skellam")
# Integer orders: the Poisson-subsampling bound needs eps(l) at every integer l <= alpha.
RDP_ORDERS: tuple[int, ...] = (*range(2, 129), 256)


def ddgauss_tau(local_sigma: float, num_clients: int) -> float:
    """``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1))`` (Kairouz et al. 2021, Thm. 1).

    Args:
        local_sigma: ``s``, each client's discrete Gaussian scale in integer units (> 0).
        num_clients: ``n``, the number of shares summed.
    """
    k = np.arange(1, int(num_clients), dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * local_sigma**2 * k / (k + 1.0)).sum())


def ddgauss_rdp(
    orders: Sequence[float] | np.ndarray,
    *,
    l2: float,
    l1: float,
    stddev: float,
    tau: float,
    dim: int,
) -> np.ndarray:
    """Per-release RDP of the distributed discrete Gaussian (Kairouz et al. 2021, Prop. 14).

    Args:
        orders: RDP orders ``alpha > 1``.
        l2: ``Delta_2``, L2 sensitivity in integer units.
        l1: ``Delta_1``, L1 sensitivity in integer units.
        stddev: ``sigma' = sqrt(n) s``, the std of the summed noise in integer units.
        tau: see :func:`ddgauss_tau`.
        dim: ``D``, the dimension of the noised vector.

    Returns:
        float64 array, one RDP value per order.
    """
    a = np.asarray(orders, dtype=np.float64)
    l2s, l1s = l2 / stddev, l1 / stddev
    first = a / 2.0 * l2s**2 + tau * dim
    second = a / 2.0 * (l2s**2 + 2.0 * l1s * tau + tau**2 * dim)
    third = a / 2.0 * (l2s + tau * math.sqrt(dim)) ** 2
    return np.minimum(np.minimum(first, second), third)


def skellam_rdp(
    orders: Sequence[float] | np.ndarray, *, l2: float, l1: float, variance: float
) -> np.ndarray:
    """Per-release RDP of the Skellam mechanism ``Sk(0, mu)`` (Agarwal et al. 2021).

    Args:
        orders: RDP orders ``alpha > 1``.
        l2, l1: sensitivities in integer units.
        variance: ``mu``, the variance of the total Skellam noise in integer units.
    """
    a = np.asarray(orders, dtype=np.float64)
    mu = variance
    extra = np.minimum(((2.0 * a - 1.0) * l2**2 + 6.0 * l1) / (4.0 * mu**2), 3.0 * l1 / (2.0 * mu))
    return a * l2**2 / (2.0 * mu) + extra


def poisson_subsampled_rdp(
    rdp: np.ndarray, orders: Sequence[int], sample_rate: float
) -> np.ndarray:
    """RDP after Poisson subsampling at rate ``q``, for a symmetric pair (see the module notes).

    Args:
        rdp: the unsampled RDP at the integer orders ``2, 3, ..., max(orders)`` (in that
            order; the bound at ``alpha`` uses every order up to ``alpha``).
        orders: integer orders ``>= 2`` at which to return the bound.
        sample_rate: ``q`` in (0, 1].

    Returns:
        float64 array, one value per entry of ``orders``: ``min(bound, unsampled)``.
    """
    q = float(sample_rate)
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    full = np.asarray(rdp, dtype=np.float64)  # full[l - 2] = eps(l)
    ints = [int(a) for a in orders]
    if any(a != o or a < 2 for a, o in zip(ints, orders)) or max(ints) - 1 > full.size:
        raise ConfigError(
            "the subsampling bound needs integer orders >= 2 and the RDP at every integer "
            f"order up to the largest; got orders {list(orders)[:5]}... and {full.size} values"
        )
    if q == 1.0:
        return full[np.asarray(ints) - 2]
    base, head = _subsampling_terms(tuple(ints), q)
    with np.errstate(invalid="ignore"):  # -inf + inf where l > alpha meets an infinite eps(l): masked next
        terms = base + (np.arange(base.shape[1]) + 1.0) * full[None, : base.shape[1]]  # + (l-1) eps(l)
    logs = np.where(np.isneginf(base), -np.inf, terms)  # (K, L): only the terms l <= alpha
    tail = np.logaddexp.reduce(logs, axis=1)  # (K,); an infinite eps(l), l <= alpha, gives inf
    bound = np.logaddexp(head, tail) / (np.asarray(ints, dtype=np.float64) - 1.0)
    return np.minimum(bound, full[np.asarray(ints) - 2])


@functools.lru_cache(maxsize=64)
def _subsampling_terms(orders: tuple[int, ...], q: float) -> tuple[np.ndarray, np.ndarray]:
    """The parts of the subsampled sum that do not depend on the mechanism.

    Returns ``base`` (K, L): ``log C(alpha, l) + l log q + (alpha - l) log(1 - q)`` for
    ``l = 2..max(orders)`` (``-inf`` where ``l > alpha``), and ``head`` (K,): the log of the
    ``l = 0, 1`` terms, ``(1-q)^(alpha-1) (1 + (alpha-1) q)``. Treat as read-only.
    """
    a = np.asarray(orders, dtype=np.float64)[:, None]  # (K, 1)
    ls = np.arange(2, max(orders) + 1, dtype=np.float64)[None, :]  # (1, L)
    used = ls <= a
    log_comb = gammaln(a + 1.0) - gammaln(ls + 1.0) - gammaln(np.maximum(a - ls, 0.0) + 1.0)
    base = np.where(used, log_comb + ls * math.log(q) + (a - ls) * math.log1p(-q), -np.inf)
    head = (a[:, 0] - 1.0) * math.log1p(-q) + np.log1p((a[:, 0] - 1.0) * q)
    return base, head


def round_rdp(
    mechanism: str,
    *,
    clip: float,
    gamma: float,
    noise_stddev: float,
    num_clients: int,
    dim: int,
    beta: float,
    sample_rate: float = 1.0,
    orders: Sequence[int] = RDP_ORDERS,
) -> np.ndarray:
    """RDP of one round at each order (sum rounds' arrays to compose them).

    Args:
        mechanism: "ddgauss" or "skellam".
        clip: ``c``, the L2 clip norm of one client's update (update units).
        gamma: granularity, update units per integer step.
        noise_stddev: ``sigma``, std of the total noise in the sum (update units).
        num_clients: ``n``, noise shares summed per round (the expected cohort).
        dim: ``d``, the update's length before padding (padded to ``D`` here).
        beta: conditional rounding parameter in [0, 1).
        sample_rate: ``q``, Poisson sampling rate of clients (1.0: no amplification).
        orders: integer RDP orders.
    """
    _check_positive(clip=clip, gamma=gamma, noise_stddev=noise_stddev)
    if int(num_clients) != num_clients or num_clients < 1:
        raise ConfigError(f"num_clients must be a positive integer, got {num_clients!r}")
    if mechanism not in MECHANISMS:
        raise ConfigError(f"mechanism must be one of {list(MECHANISMS)}, got {mechanism!r}")
    big_d = padded_dim(dim)
    l2 = rounded_l2_bound(clip / gamma, big_d, beta)
    l1 = rounded_l1_bound(l2, big_d)
    stddev = noise_stddev / gamma  # sigma', integer units
    all_orders = np.arange(2, max(int(a) for a in orders) + 1)
    if mechanism == "ddgauss":
        tau = ddgauss_tau(stddev / math.sqrt(num_clients), int(num_clients))
        rdp = ddgauss_rdp(all_orders, l2=l2, l1=l1, stddev=stddev, tau=tau, dim=big_d)
    else:
        rdp = skellam_rdp(all_orders, l2=l2, l1=l1, variance=stddev**2)
    return poisson_subsampled_rdp(rdp, orders, sample_rate)


def rdp_to_epsilon(orders: Sequence[float], rdp: np.ndarray, delta: float) -> float:
    """``epsilon`` at ``delta`` from composed RDP values (dp-accounting's conversion)."""
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}; use e.g. 1e-5")
    eps, _ = compute_epsilon(list(orders), list(np.asarray(rdp, dtype=np.float64)), delta)
    return float(eps)


def distributed_epsilon(
    mechanism: str,
    *,
    clip: float,
    gamma: float,
    noise_stddev: float,
    num_clients: int,
    dim: int,
    beta: float,
    delta: float,
    rounds: int,
    sample_rate: float = 1.0,
    orders: Sequence[int] = RDP_ORDERS,
) -> float:
    """``epsilon`` at ``delta`` after ``rounds`` identical rounds (see :func:`round_rdp`)."""
    if int(rounds) != rounds or rounds < 0:
        raise ConfigError(f"rounds must be an integer >= 0, got {rounds!r}")
    if rounds == 0:
        return 0.0
    rdp = round_rdp(
        mechanism,
        clip=clip,
        gamma=gamma,
        noise_stddev=noise_stddev,
        num_clients=num_clients,
        dim=dim,
        beta=beta,
        sample_rate=sample_rate,
        orders=orders,
    )
    return rdp_to_epsilon(orders, rdp * rounds, delta)


def calibrate_noise_stddev(
    mechanism: str,
    target_epsilon: float,
    delta: float,
    rounds: int,
    *,
    clip: float,
    gamma: float,
    num_clients: int,
    dim: int,
    beta: float,
    sample_rate: float = 1.0,
    rel_tol: float = 0.01,
    max_noise_multiplier: float = 1e4,
) -> float:
    """The smallest total noise std ``sigma`` (up to ``rel_tol``) with ``epsilon <= target``.

    A bracketed search on ``log sigma`` (:func:`~fedlm.privacy.calibrate.least_noise`): the result satisfies
    ``target (1 - rel_tol) <= epsilon(sigma) <= target``.

    Args:
        mechanism, clip, gamma, num_clients, dim, beta, sample_rate: as for
            :func:`round_rdp`.
        target_epsilon: the budget (> 0) after ``rounds`` rounds.
        delta: target delta.
        rounds: planned rounds (>= 1).
        rel_tol: how far under the target the result may land.
        max_noise_multiplier: search up to ``sigma = max_noise_multiplier * gamma * Delta_2``
            (the rounded sensitivity in update units).

    Returns:
        ``sigma`` in update units (each client adds ``sigma^2 / n`` of variance).

    Raises:
        ConfigError: the target is not positive, or unreachable within the search range.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(
            f"target_epsilon must be a positive finite number, got {target_epsilon!r}"
        )
    if int(rounds) != rounds or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1 to calibrate, got {rounds!r}")
    if not 0 < rel_tol < 1:
        raise ConfigError(f"rel_tol must be in (0, 1), got {rel_tol!r}")

    def eps(sigma: float) -> float:
        return distributed_epsilon(
            mechanism,
            clip=clip,
            gamma=gamma,
            noise_stddev=sigma,
            num_clients=num_clients,
            dim=dim,
            beta=beta,
            delta=delta,
            rounds=rounds,
            sample_rate=sample_rate,
        )

    # Search sigma in units of the rounded sensitivity gamma * Delta_2 (>= clip): for a
    # coarse gamma the noise needed grows with gamma, not with the clip norm.
    _check_positive(clip=clip, gamma=gamma)
    unit = gamma * rounded_l2_bound(clip / gamma, padded_dim(dim), beta)
    hi = unit * max_noise_multiplier
    eps_hi = eps(hi)
    if eps_hi > target_epsilon:
        raise ConfigError(
            f"target_epsilon={target_epsilon!r} is unreachable in {rounds} rounds: even "
            f"noise_stddev={hi:.4g} ({max_noise_multiplier:g} x the rounded sensitivity) gives "
            f"epsilon={eps_hi:.4g}; raise target_epsilon or plan fewer rounds"
        )
    return least_noise(eps, target_epsilon, start=unit, floor=unit * 1e-6, ceiling=hi, rel_tol=rel_tol,
                       down=4.0, up=4.0)


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a positive finite number, got {v!r}")


__all__ = [
    "MECHANISMS",
    "RDP_ORDERS",
    "calibrate_noise_stddev",
    "ddgauss_rdp",
    "ddgauss_tau",
    "distributed_epsilon",
    "poisson_subsampled_rdp",
    "rdp_to_epsilon",
    "round_rdp",
    "skellam_rdp",
]
