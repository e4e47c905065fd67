import math

import pytest

from fedlm.privacy.accountant import PrivacyAccountant
from fedlm.privacy.disclosure import epsilons_by_accountant


def _ledger(kind, sampling, z, rounds, **kw):
    acc = PrivacyAccountant(kind, sampling, noise_multiplier=z, delta=1e-5, **kw)
    acc.step(rounds)
    return acc


def test_the_summary_reports_the_same_ledger_under_both_accountants():
    run = _ledger("rdp", "poisson", 0.826, 40, sample_rate=0.1, population=120)
    got = epsilons_by_accountant(run)
    assert got["rdp"] == pytest.approx(run.epsilon(), rel=1e-12)
    pld = _ledger("pld", "poisson", 0.826, 40, sample_rate=0.1, population=120)
    assert got["pld"] == pytest.approx(pld.epsilon(), rel=1e-12)
    assert got["pld"] < got["rdp"]


def test_fixed_size_sampling_has_no_pld_figure():
    run = _ledger("rdp", "fixed", 1.0, 10, cohort_size=10, population=100)
    assert epsilons_by_accountant(run)["pld"] is None


def test_a_run_with_very_little_noise_still_gets_both_figures():
    # The end-of-run figure that ran out of memory at z = 0.01 (15.6 GiB for dp-accounting).
    got = epsilons_by_accountant(_ledger("rdp", "none", 0.01, 20, population=120))
    assert math.isfinite(got["pld"]) and got["pld"] < got["rdp"]
