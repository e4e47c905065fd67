import math

import numpy as np
import pytest

from fedlm.errors import ConfigError, FedlmError
from fedlm.privacy.distributed.rounding import (
    conditional_randomized_round,
    randomized_round,
    rounded_l1_bound,
    rounded_l2_bound,
)


def test_rounded_l2_bound_hand_worked():
    # beta = 0: c' + sqrt(D) = 10 + 4.
    assert rounded_l2_bound(10.0, 16, 0.0) == 14.0
    # beta = e^-0.5: sqrt(2 log(1/beta)) = 1, so sqrt(10^2 + 16/4 + 1 * (10 + 4/2)) = sqrt(116).
    assert rounded_l2_bound(10.0, 16, math.exp(-0.5)) == pytest.approx(math.sqrt(116.0))
    # beta = e^-2: sqrt(4) = 2; sqrt(1 + 1024/4 + 2 * (1 + 32/2)) = sqrt(291) < 1 + 32.
    assert rounded_l2_bound(1.0, 1024, math.exp(-2.0)) == pytest.approx(math.sqrt(291.0))
    # A tiny beta makes the concentration term exceed the deterministic one: min picks c' + sqrt(D).
    assert rounded_l2_bound(1.0, 4, 1e-300) == 3.0


def test_rounded_l1_bound_hand_worked():
    assert rounded_l1_bound(10.0, 16) == 40.0  # 10 * min(sqrt(16), 10)
    assert (
        rounded_l1_bound(0.5, 16) == 0.25
    )  # 0.5 * min(4, 0.5): integers have ||v||_1 <= ||v||_2^2


@pytest.mark.parametrize("beta", [-0.1, 1.0, float("nan")])
def test_bad_beta_is_rejected(beta):
    with pytest.raises(ConfigError, match="beta"):
        rounded_l2_bound(1.0, 4, beta)


def test_randomized_round_is_unbiased_and_adjacent():
    x = np.array([0.3, -1.75, 2.0, 1e6 + 0.5])
    draws = randomized_round(np.tile(x, (4000, 1)), np.random.default_rng(0))  # (4000, 4)
    assert draws.dtype == np.int64
    assert np.all((draws == np.floor(x)) | (draws == np.floor(x) + 1))
    assert np.all(draws[:, 2] == 2)
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=0.03)


@pytest.mark.parametrize("beta", [0.0, math.exp(-0.5), 0.9])
@pytest.mark.parametrize("dim", [4, 64, 1024])
def test_conditional_rounding_bound_always_holds(beta, dim):
    rng = np.random.default_rng(dim)
    c = 3.7
    bound = rounded_l2_bound(c, dim, beta)
    tries = []
    for _ in range(200):
        x = rng.normal(size=dim)
        x *= c / np.linalg.norm(x)  # on the sphere of radius c', the worst case
        r, k = conditional_randomized_round(x, bound=bound, rng=rng)
        assert float(np.linalg.norm(r)) <= bound
        assert np.all(np.abs(r - x) < 1)
        tries.append(k)
    if beta == 0.0:
        assert max(tries) == 1  # the deterministic bound never needs a retry
    assert np.mean(tries) <= 1 / (1 - beta) + 0.5


def test_conditional_rounding_gives_up_on_an_unclipped_input():
    with pytest.raises(FedlmError, match="clip the input"):
        conditional_randomized_round(
            np.full(16, 5.5), bound=3.0, rng=np.random.default_rng(0), max_tries=5
        )
