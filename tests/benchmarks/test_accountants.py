"""fedlm's epsilon beside Opacus's and Flower's, where amplification makes them differ."""

import importlib.util

import pytest

from benchmarks._accountants import fedlm_epsilon, flower_epsilon, opacus_epsilon

N, K = 1000, 100  # q = 0.1


def test_with_poisson_sampling_fedlm_agrees_with_opacus_and_is_the_larger_bound():
    fedlm = fedlm_epsilon("rdp", "poisson", 0.826, 40, N, K)
    opacus = opacus_epsilon(0.826, 40, K / N)
    # each computes the subsampled Gaussian's RDP over its own orders: 7.9427 against 7.9350
    assert fedlm == pytest.approx(opacus, rel=2e-3)
    assert fedlm >= opacus  # where they differ, fedlm's is the more conservative


def test_pld_is_tighter_than_rdp_for_the_same_mechanism():
    assert fedlm_epsilon("pld", "poisson", 2.0, 40, N, K) < fedlm_epsilon("rdp", "poisson", 2.0, 40, N, K)


def test_without_sampling_opacus_has_the_closed_form():
    # one Gaussian composed T times: RDP alpha * T / (2 z^2), then Opacus's own conversion
    assert opacus_epsilon(1.0, 40, 1.0) == pytest.approx(fedlm_epsilon("rdp", "none", 1.0, 40, N, N), rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="needs flwr (the bench extra)")
def test_flowers_poisson_accountant_gives_fedlms_rdp_epsilon():
    flower, note = flower_epsilon(0.826, 40, N, K, poisson=True)
    assert "poisson" in note
    assert flower == pytest.approx(fedlm_epsilon("rdp", "poisson", 0.826, 40, N, K), rel=1e-9)
