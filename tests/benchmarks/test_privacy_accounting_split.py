"""The noise split between central and distributed DP: the accounting adds nothing."""

import pytest

from benchmarks._dp_runs import noise_needed
from fedlm.privacy.distributed.calibration import distributed_dp_params


@pytest.mark.parametrize("sample_rate", [1.0, 0.1])
def test_the_discrete_mechanisms_amplification_needs_the_gaussians_noise(sample_rate):
    split = noise_needed(8.0, 40, sample_rate)
    assert split["accounting_ratio"] == pytest.approx(1.0, abs=2e-3)


def test_under_poisson_sampling_ddgauss_needs_central_dps_noise_to_within_one_percent():
    split = noise_needed(8.0, 40, 0.1)
    assert split["z_tight_gaussian"] == pytest.approx(0.8235, rel=2e-3)  # dp-accounting, the dp example
    ddgauss = distributed_dp_params("ddgauss", clip=1.0, dim=100_000, num_clients=12, target_epsilon=8.0,
                                    delta=1e-5, rounds=40, bits=20, sample_rate=0.1)
    # the mechanism's own terms (rounding, tau, the ring): under 1%
    assert ddgauss.noise_stddev / split["z_tight_gaussian"] == pytest.approx(1.0, abs=0.01)
    assert ddgauss.noise_stddev >= split["z_tight_gaussian"] * 0.98  # calibration lands within rel_tol
