import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy.special import logsumexp

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.accounting import (
    RDP_ORDERS,
    calibrate_noise_stddev,
    ddgauss_rdp,
    ddgauss_tau,
    distributed_epsilon,
    poisson_subsampled_rdp,
    rdp_to_epsilon,
    round_rdp,
    skellam_rdp,
)

DELTA = 1e-5
BETA = math.exp(-0.5)


def _eps(mechanism, **overrides):
    kwargs = dict(
        clip=1.0,
        gamma=1e-3,
        noise_stddev=1.0,
        num_clients=50,
        dim=1000,
        beta=BETA,
        delta=DELTA,
        rounds=100,
    )
    kwargs.update(overrides)
    return distributed_epsilon(mechanism, **kwargs)


def _gaussian_eps(z, rounds, q=1.0):
    event = (
        dpa.GaussianDpEvent(z) if q == 1.0 else dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
    )
    return RdpAccountant(orders=list(RDP_ORDERS)).compose(event, rounds).get_epsilon(DELTA)


def test_tau_hand_worked():
    assert ddgauss_tau(0.5, 1) == 0.0  # one client: its noise is a discrete Gaussian
    # n = 3, s = 0.5: 10 (exp(-2 pi^2 0.25 * 1/2) + exp(-2 pi^2 0.25 * 2/3))
    #               = 10 (exp(-pi^2 / 4) + exp(-pi^2 / 3)) = 10 (0.08480 + 0.03727).
    expected = 10 * (math.exp(-(math.pi**2) / 4) + math.exp(-(math.pi**2) / 3))
    assert ddgauss_tau(0.5, 3) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.2207, abs=1e-4)


@pytest.mark.parametrize(
    ("l1", "expected", "winner"),
    [
        # l2/sigma' = 0.5, tau = 0.1, D = 16, alpha = 2 (so alpha/2 = 1):
        #   first  = 0.25 + tau D = 0.25 + 1.6 = 1.85
        #   second = 0.25 + 2 tau l1/sigma' + tau^2 D = 0.25 + 0.2 l1/sigma' + 0.16
        #   third  = (0.5 + tau sqrt(D))^2 = 0.9^2 = 0.81
        (2.0, 0.25 + 0.2 * 1.0 + 0.16, "second"),  # l1/sigma' = 1: 0.61
        (6.0, 0.81, "third"),  # l1/sigma' = 3: second = 1.01
    ],
)
def test_ddgauss_rdp_hand_worked(l1, expected, winner):
    got = ddgauss_rdp([2], l2=1.0, l1=l1, stddev=2.0, tau=0.1, dim=16)
    assert got[0] == pytest.approx(expected, rel=1e-12), winner


def test_ddgauss_rdp_first_term_wins_with_little_tau():
    # l2/sigma' = 1.5, tau = 1e-3, D = 4, alpha = 10: first = 5 * 2.25 + 0.004 = 11.254,
    # second = 5 * (2.25 + 2 * 4.5e-3 + 4e-6) = 11.29502, third = 5 * (1.5 + 0.002)^2 = 11.28002.
    assert ddgauss_rdp([10], l2=3.0, l1=9.0, stddev=2.0, tau=1e-3, dim=4)[0] == pytest.approx(
        11.254
    )


def test_skellam_rdp_hand_worked():
    # alpha = 3, Delta_2 = 2, Delta_1 = 4, mu = 10:
    #   3 * 4 / 20 + min((5 * 4 + 24) / 400, 3 * 4 / 20) = 0.6 + 0.11 = 0.71.
    assert skellam_rdp([3], l2=2.0, l1=4.0, variance=10.0)[0] == pytest.approx(0.71)
    # mu = 1: 3 * 4 / 2 + min(44 / 4, 12 / 2) = 6 + 6.
    assert skellam_rdp([3], l2=2.0, l1=4.0, variance=1.0)[0] == pytest.approx(12.0)


def test_poisson_subsampling_hand_worked():
    eps = np.array([0.8, 1.1, 1.5])  # eps(2), eps(3), eps(4)
    q = 0.1
    got = poisson_subsampled_rdp(eps, [2, 3, 4], q)
    # alpha = 2: log((1-q)(1+q) + q^2 e^eps(2)) = log(1 + q^2 (e^eps(2) - 1)).
    assert got[0] == pytest.approx(math.log1p(q**2 * math.expm1(0.8)), rel=1e-12)
    # alpha = 3: (1/2) log((1-q)^2 (1+2q) + 3 q^2 (1-q) e^eps(2) + q^3 e^(2 eps(3))).
    inner = (
        (1 - q) ** 2 * (1 + 2 * q) + 3 * q**2 * (1 - q) * math.exp(0.8) + q**3 * math.exp(2.2)
    )
    assert got[1] == pytest.approx(0.5 * math.log(inner), rel=1e-12)
    assert np.all(got <= eps)
    np.testing.assert_array_equal(poisson_subsampled_rdp(eps, [2, 4], 1.0), eps[[0, 2]])


@pytest.mark.parametrize(("z", "q", "rounds"), [(0.826, 0.1, 40), (1.0, 0.01, 1000), (0.5, 0.3, 5)])
def test_a_gaussian_curve_subsampled_is_dp_accountings_exact_analysis(z, q, rounds):
    # eps(l) = l / (2 z^2): the sum is the sampled Gaussian's RDP at integer orders
    # (Mironov, Talwar and Zhang 2019), which dp-accounting evaluates in closed form.
    rdp = np.arange(2, max(RDP_ORDERS) + 1) / (2 * z * z)
    got = rdp_to_epsilon(RDP_ORDERS, poisson_subsampled_rdp(rdp, RDP_ORDERS, q) * rounds, DELTA)
    assert got == pytest.approx(_gaussian_eps(z, rounds, q=q), rel=1e-12)


def _renyi(a, b, order):
    """``D_order(a || b)`` of two probability vectors on one finite set (full support)."""
    return float(logsumexp(order * np.log(a) + (1.0 - order) * np.log(b))) / (order - 1.0)


def _both_directions(p, shifted, q, orders):
    """Exact RDP of the Poisson-subsampled pair, remove and add directions."""
    mix = (1 - q) * p + q * shifted
    return (np.array([_renyi(mix, p, a) for a in orders]), np.array([_renyi(p, mix, a) for a in orders]))


def _ring_pmf(pmf, support, modulus):
    """Fold a pmf on the integers ``support`` onto Z_modulus (the SecAgg+ ring)."""
    ring = np.zeros(modulus)
    np.add.at(ring, np.mod(support, modulus), pmf)
    return ring / ring.sum()


def _summed_discrete_gaussians(scale, shares, modulus):
    k = np.arange(-60, 61)
    one = np.exp(-(k**2) / (2.0 * scale**2))
    total = one / one.sum()
    for _ in range(shares - 1):
        total = np.convolve(total, one / one.sum())
    return _ring_pmf(total, np.arange(total.size) - (total.size // 2), modulus)


def _skellam(variance, modulus):
    from scipy.stats import skellam

    k = np.arange(-200, 201)
    return _ring_pmf(skellam.pmf(k, variance / 2, variance / 2), k, modulus)


@pytest.mark.parametrize(
    "noise",
    [
        _summed_discrete_gaussians(0.6, 3, 32),  # tau is large here: far from one Gaussian
        _summed_discrete_gaussians(1.5, 4, 64),
        _skellam(6.0, 32),
    ],
    ids=["ddgauss-3-shares", "ddgauss-4-shares", "skellam"],
)
@pytest.mark.parametrize("q", [0.02, 0.3, 0.9])
def test_the_subsampled_sum_bounds_both_directions_of_the_exact_mechanism(noise, q):
    # The noisy sums without and with one client's vector v = 3 on the ring: P and P
    # shifted. The bound fed with the exact unsampled RDP equals the exact remove
    # direction, and the add direction is never larger: the pair is symmetric.
    shifted = np.roll(noise, 3)
    orders = list(range(2, 33))
    exact = np.array([_renyi(shifted, noise, a) for a in orders])
    remove, add = _both_directions(noise, shifted, q, orders)
    bound = poisson_subsampled_rdp(exact, orders, q)
    below = bound < exact  # where amplification helps, the sum is the remove direction itself
    np.testing.assert_allclose(remove[below], bound[below], rtol=1e-9)
    assert np.all(remove <= bound * (1 + 1e-9))
    assert np.all(add <= remove * (1 + 1e-9) + 1e-15)


def test_the_bound_fed_with_the_papers_rdp_covers_the_exact_ddgauss():
    # Three shares of N_Z(0, 1.5^2) in one dimension, v = 3: Kairouz et al.'s eps(l) with
    # tau and the L1 term, then subsampled, stays above the exact subsampled divergences.
    noise = _summed_discrete_gaussians(1.5, 3, 64)
    orders = list(range(2, 33))
    paper = ddgauss_rdp(orders, l2=3.0, l1=3.0, stddev=1.5 * math.sqrt(3), tau=ddgauss_tau(1.5, 3), dim=1)
    for q in (0.05, 0.5):
        remove, add = _both_directions(noise, np.roll(noise, 3), q, orders)
        bound = poisson_subsampled_rdp(paper, orders, q)
        assert np.all(np.maximum(remove, add) <= bound)


def test_without_symmetry_the_add_direction_can_exceed_the_sum():
    # An asymmetric pair (no bijection swaps P and Q): the add direction breaks the bound,
    # which is why the sum is only used for the symmetric discrete mechanisms.
    p, other = np.array([0.10, 0.40, 0.50]), np.array([0.15, 0.84, 0.01])
    orders = list(range(2, 10))
    exact = np.array([_renyi(other, p, a) for a in orders])
    remove, add = _both_directions(p, other, 0.95, orders)
    bound = poisson_subsampled_rdp(exact, orders, 0.95)
    assert np.all(remove <= bound * (1 + 1e-9))
    assert add[-1] > bound[-1] + 1.0


def test_an_infinite_rdp_stays_infinite_after_subsampling():
    got = poisson_subsampled_rdp(np.array([0.5, np.inf, np.inf]), [2, 3, 4], 0.1)
    assert math.isfinite(got[0]) and np.all(np.isinf(got[1:]))


def test_poisson_subsampling_needs_every_integer_order():
    with pytest.raises(ConfigError, match="integer orders"):
        poisson_subsampled_rdp(np.array([0.1, 0.2]), [2, 5], 0.5)


def test_rdp_to_epsilon_matches_dp_accounting_for_a_gaussian():
    orders = list(RDP_ORDERS)
    rdp = np.array(orders, dtype=float) / (2 * 1.3**2) * 40
    assert rdp_to_epsilon(orders, rdp, DELTA) == pytest.approx(_gaussian_eps(1.3, 40), rel=1e-12)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_fine_granularity_approaches_the_continuous_gaussian(mechanism):
    # gamma -> 0: Delta_2 -> c / gamma, tau -> 0 (s is huge), Skellam's extra term -> 0.
    for z in (0.8, 2.0, 5.0):
        got = _eps(mechanism, gamma=1e-7, noise_stddev=z, rounds=50)
        assert got == pytest.approx(_gaussian_eps(z, 50), rel=2e-3)
    # With Poisson sampling too: the subsampled sum is the Gaussian's exact one.
    got = _eps(mechanism, gamma=1e-7, noise_stddev=1.0, rounds=100, sample_rate=0.02)
    assert got == pytest.approx(_gaussian_eps(1.0, 100, q=0.02), rel=2e-3)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_epsilon_is_monotone_in_sigma_rounds_and_sampling(mechanism):
    by_sigma = [_eps(mechanism, noise_stddev=s) for s in (0.5, 0.8, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(by_sigma) < 0)
    by_rounds = [_eps(mechanism, rounds=r) for r in (1, 10, 100, 1000)]
    assert np.all(np.diff(by_rounds) > 0)
    by_rate = [_eps(mechanism, sample_rate=q) for q in (0.01, 0.1, 0.5, 1.0)]
    assert np.all(np.diff(by_rate) > 0)
    assert _eps(mechanism, rounds=0) == 0.0


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_coarse_rounding_costs_privacy(mechanism):
    # gamma = 0.05 with D = 1024: Delta_2^2 ~ (1/gamma)^2 + D/4 + ... grows the sensitivity.
    fine = _eps(mechanism, gamma=1e-5)
    coarse = _eps(mechanism, gamma=0.05)
    assert coarse > 1.1 * fine


def test_tau_penalises_many_low_noise_discrete_gaussians():
    # 1000 clients sharing sigma' = 10 integer units: each adds s = 0.32, far from a
    # discrete Gaussian in sum, so tau is huge; the Skellam has no such term.
    common = dict(gamma=0.1, noise_stddev=1.0, num_clients=1000, dim=100, rounds=1)
    assert _eps("ddgauss", **common) > 100 * _eps("skellam", **common)
    # With one client the discrete Gaussian is exact: tau = 0.
    ddg = round_rdp("ddgauss", clip=1, gamma=0.1, noise_stddev=1, num_clients=1, dim=100, beta=BETA)
    sk = round_rdp("skellam", clip=1, gamma=0.1, noise_stddev=1, num_clients=1, dim=100, beta=BETA)
    assert np.all(ddg <= sk)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
@pytest.mark.parametrize("q", [1.0, 0.05])
def test_calibration_lands_just_under_the_target(mechanism, q):
    common = dict(clip=2.0, gamma=1e-3, num_clients=20, dim=500, beta=BETA, sample_rate=q)
    sigma = calibrate_noise_stddev(mechanism, 4.0, DELTA, 200, **common)
    got = distributed_epsilon(mechanism, noise_stddev=sigma, delta=DELTA, rounds=200, **common)
    assert 4.0 * 0.99 <= got <= 4.0


def test_calibration_rejects_an_unreachable_target():
    with pytest.raises(ConfigError, match="unreachable"):
        calibrate_noise_stddev(
            "ddgauss", 1e-4, DELTA, 10**6, clip=1.0, gamma=1e-3, num_clients=10, dim=10, beta=BETA
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [("noise_stddev", 0.0), ("gamma", -1.0), ("num_clients", 0), ("sample_rate", 1.5)],
)
def test_bad_parameters_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        _eps("ddgauss", **{field: value})


def test_unknown_mechanism():
    with pytest.raises(ConfigError, match="mechanism"):
        _eps("laplace")
