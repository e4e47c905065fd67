"""Where distributed DP's extra noise comes from: the subsampling bound, not the mechanism."""

import pytest

from benchmarks._dp_runs import noise_needed
from fedlm.privacy.distributed.calibration import distributed_dp_params


def test_without_sampling_both_analyses_need_the_same_noise():
    # q = 1: the general bound returns the unsampled RDP alpha / (2 z^2), the Gaussian's own
    split = noise_needed(8.0, 20, 1.0)
    assert split["accounting_ratio"] == pytest.approx(1.0, abs=2e-3)


def test_under_poisson_sampling_the_general_bound_costs_noise_and_ddgauss_adds_little():
    split = noise_needed(8.0, 40, 0.1)
    assert split["z_tight_gaussian"] == pytest.approx(0.8235, rel=2e-3)  # dp-accounting, the dp example
    assert 1.08 < split["accounting_ratio"] < 1.13
    ddgauss = distributed_dp_params("ddgauss", clip=1.0, dim=100_000, num_clients=12, target_epsilon=8.0,
                                    delta=1e-5, rounds=40, bits=20, sample_rate=0.1)
    # the mechanism's own terms (rounding, tau, the ring) on top of the general bound: under 1%
    assert ddgauss.noise_stddev / split["z_general_bound"] == pytest.approx(1.0, abs=0.01)
    assert ddgauss.noise_stddev >= split["z_general_bound"] * 0.98  # calibration lands within rel_tol
