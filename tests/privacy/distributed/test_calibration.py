import dataclasses
import math

import dp_accounting as dpa
import numpy as np
import pytest

from fedlm.errors import ConfigError
from fedlm.privacy.calibrate import least_noise
from fedlm.privacy.distributed.accounting import RDP_ORDERS, distributed_epsilon
from fedlm.privacy.distributed.calibration import (
    distributed_dp_params,
    min_bits,
    wraparound_probability,
)
from fedlm.privacy.distributed.mechanism import (
    DistributedDpParams,
    client_encode,
    modular_sum,
    server_decode,
)

DELTA = 1e-5


def _params(**overrides):
    kwargs = dict(
        mechanism="ddgauss", clip=1.0, dim=1000, num_clients=4, gamma=1.0, noise_stddev=0.0, bits=12
    )
    kwargs.update(overrides)
    return DistributedDpParams(**kwargs)


def test_wraparound_hand_worked_discrete_gaussian():
    # No signal: only the noise, n s^2-sub-Gaussian with n = 4, s = 100 (sigma = 200).
    # a = 2^11 - n = 2044; min_t -t a + t^2 v / 2 = -a^2 / (2 v), v = 4 * 100^2.
    p = _params(noise_stddev=200.0)
    expected = 2 * 1024 * math.exp(-(2044**2) / (2 * 40_000))
    assert wraparound_probability(p, signal_norm=0.0) == pytest.approx(expected, rel=1e-9)


def test_wraparound_hand_worked_skellam():
    # Skellam with variance mu = 4 * 100^2: the Chernoff exponent at t = asinh(a / mu) is
    # -a asinh(a / mu) + mu (sqrt(1 + (a / mu)^2) - 1).
    p = _params(mechanism="skellam", noise_stddev=200.0)
    a, mu = 2044.0, 40_000.0
    exponent = -a * math.asinh(a / mu) + mu * (math.sqrt(1 + (a / mu) ** 2) - 1)
    expected = 2 * 1024 * math.exp(exponent)
    assert wraparound_probability(p, signal_norm=0.0) == pytest.approx(expected, rel=1e-9)
    # Skellam tails are heavier than the matching sub-Gaussian's.
    gauss = wraparound_probability(_params(noise_stddev=200.0), signal_norm=0.0)
    assert wraparound_probability(p, signal_norm=0.0) > gauss


def test_wraparound_hand_worked_signal_only():
    # No noise: the rotated sum ||sum|| = n c = 4, gamma = 1/64, D = 1024 gives the proxy
    # v = (4 * 64)^2 / 1024 = 64; a = 2044: 2 D exp(-2044^2 / 128) underflows to 0.
    assert wraparound_probability(_params(gamma=1 / 64)) == 0.0
    # bits = 4: a = 8 - 4 = 4, 2 D exp(-16 / 128) > 1, capped.
    assert wraparound_probability(_params(gamma=1 / 64, bits=4)) == 1.0
    # bits = 2: the rounding errors alone (< n = 4 steps) may not fit in [-2, 2).
    assert wraparound_probability(_params(bits=2)) == 1.0


def test_wraparound_bound_holds_empirically():
    # 100 rounds at a configuration the bound puts at <= 1e-3: no coordinate may wrap.
    p = _params(dim=256, num_clients=3, gamma=0.01, noise_stddev=0.2, bits=9)
    assert wraparound_probability(p) <= 1e-3
    rng = np.random.default_rng(0)
    for r in range(100):
        xs = rng.normal(size=(3, 256))
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)  # norm exactly c: the worst case
        enc = [client_encode(x, p, rotation_seed=r, rng=rng)[0] for x in xs]
        decoded = server_decode(modular_sum(enc, bits=p.bits), p, rotation_seed=r)
        # noise std 0.2 and rounding < 3 gamma per coordinate: a wrap would be off by 5.12.
        assert np.max(np.abs(decoded - xs.sum(axis=0))) < 1.6


def test_min_bits_is_minimal_and_grows_with_clients():
    p = _params(gamma=1e-3, noise_stddev=0.05)
    b = min_bits(p, wrap_probability=1e-6)
    assert wraparound_probability(dataclasses.replace(p, bits=b)) <= 1e-6
    assert wraparound_probability(dataclasses.replace(p, bits=b - 1)) > 1e-6
    assert min_bits(dataclasses.replace(p, num_clients=400), wrap_probability=1e-6) > b
    # A cohort larger than planned (Poisson sampling) needs more room.
    at_b = dataclasses.replace(p, bits=b)
    assert wraparound_probability(at_b, cohort_size=8) > wraparound_probability(at_b)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
@pytest.mark.parametrize("sample_rate", [1.0, 0.1])
def test_distributed_dp_params_meet_privacy_and_ring(mechanism, sample_rate):
    kw = dict(clip=1.0, dim=5000, num_clients=50, target_epsilon=5.0, delta=DELTA, rounds=100)
    p = distributed_dp_params(mechanism, bits=20, sample_rate=sample_rate, rel_tol=0.05, **kw)
    assert p.bits == 20 and p.mechanism == mechanism
    eps = distributed_epsilon(
        mechanism,
        clip=1.0,
        gamma=p.gamma,
        noise_stddev=p.noise_stddev,
        num_clients=50,
        dim=5000,
        beta=p.beta,
        delta=DELTA,
        rounds=100,
        sample_rate=sample_rate,
    )
    assert 5.0 * 0.99 <= eps <= 5.0
    assert wraparound_probability(p) <= 1e-9
    # The finest granularity that fits: a noticeably finer one overflows the ring.
    finer = dataclasses.replace(p, gamma=p.gamma / 1.2)
    assert wraparound_probability(finer) > 1e-9
    # More bits buy a finer granularity.
    wider = distributed_dp_params(mechanism, bits=24, sample_rate=sample_rate, rel_tol=0.05, **kw)
    assert wider.gamma < p.gamma / 8


def test_distributed_dp_params_rejects_too_few_bits():
    with pytest.raises(ConfigError, match="raise bits"):
        distributed_dp_params(
            "ddgauss",
            clip=1.0,
            dim=100,
            num_clients=100,
            target_epsilon=5.0,
            delta=DELTA,
            rounds=10,
            bits=7,
        )


def test_bad_wrap_probability():
    with pytest.raises(ConfigError, match="wrap_probability"):
        min_bits(_params(), wrap_probability=0.0)


def test_calibrated_parameters_round_trip():
    # 16-bit ring, 20 clients, epsilon 8 over 50 rounds: encode, sum mod 2^16, decode.
    p = distributed_dp_params(
        "skellam",
        clip=0.5,
        dim=2000,
        num_clients=20,
        target_epsilon=8.0,
        delta=DELTA,
        rounds=50,
        bits=16,
    )
    rng = np.random.default_rng(5)
    xs = rng.normal(size=(20, 2000)) * 0.02  # norms ~0.9, clipped to 0.5
    clipped = xs * np.minimum(1.0, 0.5 / np.linalg.norm(xs, axis=1, keepdims=True))
    enc = [client_encode(x, p, rotation_seed=9, rng=rng)[0] for x in xs]
    assert all(int(z.max()) < 2**16 for z in enc)
    err = server_decode(modular_sum(enc, bits=16), p, rotation_seed=9) - clipped.sum(axis=0)
    # Noise std sigma plus rounding (< sqrt(n / 4) gamma): no wrap-around outliers.
    scale = math.sqrt(p.noise_stddev**2 + 20 * p.gamma**2 / 4)
    assert err.std() < 1.1 * scale and np.max(np.abs(err)) < 6 * scale


def test_under_poisson_sampling_ddgauss_needs_central_dps_noise_to_within_one_percent():
    # The dp example's point (q = 0.1, 40 rounds, epsilon 8): the Gaussian through
    # dp-accounting needs z = 0.8235; DDGauss's own terms (rounding, tau, the ring) add under 1%.
    def gaussian_eps(z):
        event = dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(z))
        return dpa.rdp.RdpAccountant(list(RDP_ORDERS)).compose(event, 40).get_epsilon(1e-5)

    z_central = least_noise(gaussian_eps, 8.0, start=1.0, floor=1e-3, ceiling=1e3, rel_tol=1e-3, down=1.5, up=1.5)
    assert z_central == pytest.approx(0.8235, rel=2e-3)
    ddgauss = distributed_dp_params("ddgauss", clip=1.0, dim=100_000, num_clients=12, target_epsilon=8.0,
                                    delta=1e-5, rounds=40, bits=20, sample_rate=0.1)
    assert ddgauss.noise_stddev / z_central == pytest.approx(1.0, abs=0.01)
    assert ddgauss.noise_stddev >= z_central * 0.98  # calibration lands within rel_tol
