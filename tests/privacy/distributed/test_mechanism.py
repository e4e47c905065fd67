import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import skellam

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.calibration import min_bits, wraparound_probability
from fedlm.privacy.distributed.discrete_noise import discrete_gaussian_pmf
from fedlm.privacy.distributed.mechanism import (
    DistributedDpParams,
    centre,
    client_encode,
    modular_sum,
    server_decode,
)

ROUND_SEED = (1234, 7)  # public: (experiment seed, round)


def _params(**overrides):
    kwargs = dict(
        mechanism="ddgauss",
        clip=1.0,
        dim=3000,
        num_clients=10,
        gamma=1e-3,
        noise_stddev=0.05,
        bits=24,
    )
    kwargs.update(overrides)
    return DistributedDpParams(**kwargs)


def _round(params, xs, seed=0):
    """Encode every client, sum mod 2^b as SecAgg would, decode."""
    rngs = [np.random.default_rng([seed, i]) for i in range(len(xs))]
    encoded = [
        client_encode(x, params, rotation_seed=ROUND_SEED, rng=r)[0] for x, r in zip(xs, rngs)
    ]
    total = modular_sum(encoded, bits=params.bits)
    return server_decode(total, params, rotation_seed=ROUND_SEED), encoded, total


def _updates(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, dim)) * rng.uniform(0.002, 0.04, size=(n, 1))  # norms ~0.1 to 2.2
    clipped = [x * min(1.0, 1.0 / np.linalg.norm(x)) for x in xs]
    return list(xs), np.sum(clipped, axis=0)


def test_modular_sum_and_centre_hand_worked():
    # mod 8: [7, 5] + [3, 6] = [10, 11] = [2, 3]; centring maps [4, 8) to [-4, 0).
    total = modular_sum([np.array([7, 5], np.uint64), np.array([3, 6], np.uint64)], bits=3)
    assert total.tolist() == [2, 3]
    assert centre(np.array([0, 3, 4, 7], np.uint64), bits=3).tolist() == [0, 3, -4, -1]


def test_modular_sum_wraps_like_the_ring():
    big = np.array([2**40 - 1], np.uint64)
    assert modular_sum([big, big, np.array([5], np.uint64)], bits=40).tolist() == [
        (2 * (2**40 - 1) + 5) % 2**40
    ]


def test_noiseless_round_trip_is_the_clipped_sum_up_to_rounding():
    params = _params(noise_stddev=0.0)
    xs, plain = _updates(10, 3000)
    decoded, encoded, _ = _round(params, xs)
    assert all(z.dtype == np.uint64 and z.shape == (4096,) and z.max() < 2**24 for z in encoded)
    # Each client's rounding moves its rotated vector by < 1 step per coordinate, so the
    # error of the sum has L2 norm < n * gamma * sqrt(D); unbiased, it is ~sqrt(n D / 6) gamma.
    err = np.linalg.norm(decoded - plain)
    assert err < 10 * 1e-3 * 64
    assert err < 3 * 1e-3 * math.sqrt(10 * 4096 / 6)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_noisy_round_trip_matches_the_plain_sum_up_to_the_noise(mechanism):
    params = _params(mechanism=mechanism)
    xs, plain = _updates(10, 3000, seed=1)
    assert wraparound_probability(params) < 1e-9
    decoded, _, _ = _round(params, xs, seed=2)
    err = decoded - plain  # (d,): total noise (std 0.05) + rounding (std < sqrt(10/4) gamma)
    expected_var = 0.05**2 + 10 * 1e-3**2 / 4
    assert abs(err.mean()) < 4 * math.sqrt(expected_var / 3000)
    assert err.var() == pytest.approx(0.05**2, rel=0.08)
    assert err.var() < expected_var * 1.08


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_sum_of_noise_shares_has_the_mechanism_distribution(mechanism):
    # Zero updates round exactly to 0, so the centred sum is the sum of the n noise shares:
    # 4 x N_Z(0, 1.2^2) (a 4-fold convolution, not a discrete Gaussian), or Sk(0, 4 * 1.44).
    params = _params(mechanism=mechanism, dim=2**15, num_clients=4, gamma=1.0, noise_stddev=2.4)
    assert params.local_scale == pytest.approx(1.2)
    _, _, total = _round(params, [np.zeros(2**15)] * 4, seed=3)
    sums = np.sort(centre(total, bits=params.bits))  # (D,) i.i.d. draws of the sum
    ks = np.arange(sums.min(), sums.max() + 1)
    if mechanism == "ddgauss":
        support = np.arange(-30, 31)
        pmf = discrete_gaussian_pmf(support, sigma=1.2)
        conv = pmf
        for _ in range(3):
            conv = np.convolve(conv, pmf)  # support -120..120
        cdf = np.cumsum(conv)[ks + 120]
    else:
        cdf = skellam.cdf(ks, 2.88, 2.88)
    ecdf = np.searchsorted(sums, ks, side="right") / sums.size
    assert np.max(np.abs(ecdf - cdf)) < 1.63 / math.sqrt(sums.size)  # KS at the 1% level
    assert sums.var() == pytest.approx(4 * 1.44, rel=0.05)


def test_conditional_rounding_keeps_each_client_inside_the_bound():
    params = _params(noise_stddev=0.0, dim=100, num_clients=1, gamma=0.05)
    bound = params.l2_bound
    for seed in range(50):
        x = np.random.default_rng(seed).normal(size=100)
        z, metrics = client_encode(x, params, rotation_seed=seed, rng=np.random.default_rng(seed))
        assert float(np.linalg.norm(centre(z, bits=params.bits))) <= bound
        assert metrics["clipped"] == 1.0 and metrics["norm"] == pytest.approx(np.linalg.norm(x))
        assert metrics["rounding_tries"] >= 1


def test_rounding_without_conditioning_is_unbiased():
    params = _params(noise_stddev=0.0, dim=20, num_clients=1, gamma=0.1, beta=0.0)
    x = np.linspace(-0.2, 0.2, 20)
    rng = np.random.default_rng(0)
    decoded = [
        server_decode(
            client_encode(x, params, rotation_seed=5, rng=rng)[0], params, rotation_seed=5
        )
        for _ in range(500)
    ]
    # One decode errs by ~gamma / sqrt(6) = 0.04 per coordinate; the mean of 500 by ~0.002.
    np.testing.assert_allclose(np.mean(decoded, axis=0), x, atol=0.012)


def test_too_few_bits_wrap_and_the_bound_says_so():
    # Noiseless, so that only the ring can be at fault. The rotated signal has ~49 steps
    # of std per coordinate (||sum|| ~ 3.2 over sqrt(D) = 64, gamma = 1e-3): 7 bits hold
    # [-64, 64), so about a fifth of the coordinates wrap, each off by 128 steps.
    params = _params(noise_stddev=0.0, bits=7)
    xs, plain = _updates(10, 3000, seed=4)
    decoded, _, _ = _round(params, xs)
    assert np.linalg.norm(decoded - plain) > 1.0
    assert wraparound_probability(params) == 1.0
    enough = dataclasses.replace(params, bits=min_bits(params))
    assert enough.bits > 7 and wraparound_probability(enough) <= 1e-9
    decoded, _, _ = _round(enough, xs)
    assert np.linalg.norm(decoded - plain) < 10 * 1e-3 * 64


def test_torch_tensors_are_accepted():
    params = _params(noise_stddev=0.0, dim=8, num_clients=1, gamma=1e-4)
    x = torch.arange(8, dtype=torch.float32) / 100
    z, _ = client_encode(x, params, rotation_seed=0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(server_decode(z, params, rotation_seed=0), x.numpy(), atol=1e-3)


def test_encode_rejects_wrong_shapes_and_nan():
    params = _params(dim=8)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="dim=8"):
        client_encode(np.zeros(9), params, rotation_seed=0, rng=rng)
    with pytest.raises(ConfigError, match="NaN"):
        client_encode(np.full(8, np.nan), params, rotation_seed=0, rng=rng)
    with pytest.raises(ConfigError, match="expected"):
        server_decode(np.zeros(4, np.uint64), params, rotation_seed=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mechanism", "laplace"),
        ("clip", 0.0),
        ("gamma", float("inf")),
        ("noise_stddev", -1.0),
        ("dim", 0),
        ("num_clients", 1.5),
        ("bits", 1),
        ("bits", 63),
        ("beta", 1.0),
    ],
)
def test_params_reject_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        _params(**{field: value})


def test_params_derived_quantities():
    p = _params(clip=2.0, dim=1000, gamma=0.01, noise_stddev=3.0, num_clients=9, beta=0.0)
    assert p.padded_dim == 1024
    assert p.l2_bound == pytest.approx(200.0 + 32.0)  # c / gamma + sqrt(D)
    assert p.l1_bound == pytest.approx(232.0 * 32.0)
    assert p.local_scale == pytest.approx(3.0 / (0.01 * 3))
    assert p.to_dict()["mechanism"] == "ddgauss"
