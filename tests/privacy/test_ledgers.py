"""Round-by-round accounting at the noise each sum really held (dropouts, honest fraction)."""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedlm.privacy.accountant import PrivacyAccountant
from fedlm.privacy.distributed.accounting import RDP_ORDERS, distributed_epsilon, rdp_to_epsilon
from fedlm.privacy.distributed.ledger import DistributedLedger
from fedlm.privacy.distributed.mechanism import DistributedDpParams
from fedlm.privacy.ledgers import DpLedgers
from fedlm.privacy.plan import DpPlan

DELTA = 1e-5


def _plan(mode="distributed", *, f=1.0, z=1.0, q=0.1, discrete=None):
    return DpPlan(mode=mode, accountant="rdp", sampling="poisson", amplified=True, population=100, cohort_size=10,
                  sample_rate=q, denominator=10.0, clip_norm=1.0, margin=0.0, sensitivity=1.0, noise_multiplier=z,
                  noise_source="given", delta=DELTA, min_honest_fraction=f, clipped_count_stddev=None,
                  discrete=discrete)


def _rdp(*events):
    acc = RdpAccountant()
    for e in events:
        acc.compose(e)
    return acc.get_epsilon(DELTA)


def test_the_accountant_composes_rounds_of_different_z_and_no_noise_is_infinite():
    acc = PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.1)
    acc.step(1, noise_multiplier=0.8)
    acc.step(2)
    want = _rdp(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(0.8)),
                dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)), 2))
    assert acc.epsilon() == pytest.approx(want, rel=1e-12)
    assert acc.noise_multiplier == 1.0  # a round's own z does not change the planned one
    acc.step(1, noise_multiplier=0.0)
    assert acc.epsilon() == math.inf


def test_dropouts_lower_the_noise_the_reported_epsilon_counts():
    # 40% of a 10-client cohort dropped at the masked-input phase: 6 shares of std z C / sqrt(10)
    # reached the sum, so it held multiplier z sqrt(6 / 10), not z.
    led = DpLedgers(_plan())
    info = led.step(10, survivors=6)
    z_r = math.sqrt(0.6)
    assert info["noise_multiplier"] == pytest.approx(z_r) and info["noise_shares"] == {"planned": 10, "in_sum": 6}
    survivors_only = _rdp(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(z_r)))
    assert info["epsilon"] >= survivors_only * (1 - 1e-12)
    assert info["epsilon"] > _rdp(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)))  # what was claimed before
    assert info["epsilon_server"] == pytest.approx(_rdp(dpa.GaussianDpEvent(z_r)))  # the server knows the cohort
    led.step(10, survivors=None)  # an aborted sum revealed nothing: planned noise (conservative)
    assert led.accountant.state_dict()["history"] == [[z_r, 1], [1.0, 1]]


def test_the_honest_fraction_scales_shares_so_survivors_beyond_the_dishonest_keep_z():
    led = DpLedgers(_plan(f=0.8))
    assert led.step(10, survivors=10)["noise_multiplier"] == pytest.approx(1.0)  # 8 honest of 10, shares for 8
    assert led.step(10, survivors=9)["noise_multiplier"] == pytest.approx(math.sqrt(7 / 8))
    assert led.step(10, survivors=2)["noise_multiplier"] == 0.0  # at most the 2 dishonest survived
    assert led.epsilon() == math.inf


def test_central_mode_accounts_the_planned_z_whatever_survived():
    led = DpLedgers(_plan("central"))
    info = led.step(7, survivors=3)
    assert info["noise_multiplier"] == 1.0 and "epsilon_server" not in info and led.epsilon_server() is None


def _ledger(mechanism="skellam", **kw):
    args = dict(clip=1.0, gamma=1.0, noise_stddev=10.0, dim=1, beta=0.0, delta=DELTA, sample_rate=None)
    return DistributedLedger(mechanism, **{**args, **kw})


def test_discrete_ledger_hand_worked_skellam_point():
    # dim 1 (D = 1), gamma 1, beta 0: Delta_2 = c' + sqrt(D) = 2, Delta_1 = Delta_2 min(1, 2) = 2.
    # 1 of 4 shares reached the sum: sigma' = 10 sqrt(1/4) = 5, mu = 25. At alpha = 2:
    # alpha Delta_2^2 / (2 mu) + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu))
    #   = 8 / 50 + min(24 / 2500, 6 / 50) = 0.16 + 0.0096 = 0.1696.
    led = _ledger()
    assert led.rdp(4, 1)[0] == pytest.approx(0.1696, rel=1e-12)
    led.step(4, 1)
    assert led.epsilon() == pytest.approx(rdp_to_epsilon(RDP_ORDERS, led.rdp(4, 1), DELTA), rel=1e-12)
    led.step(4, 0)
    assert led.epsilon() == math.inf


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_discrete_ledger_matches_the_mechanism_accounting_and_prices_dropouts(mechanism):
    p = DistributedDpParams(mechanism=mechanism, clip=1.0, dim=500, num_clients=20, gamma=1e-3, noise_stddev=1.5,
                            bits=24)
    led = DistributedLedger(mechanism, clip=1.0, gamma=1e-3, noise_stddev=1.5, dim=500, beta=p.beta, delta=DELTA,
                            sample_rate=0.05)
    led.step(20, 20, n=30)
    common = dict(clip=1.0, gamma=1e-3, dim=500, beta=p.beta, delta=DELTA, rounds=30)
    full = distributed_epsilon(mechanism, noise_stddev=1.5, num_clients=20, sample_rate=0.05, **common)
    assert led.epsilon() == pytest.approx(full, rel=1e-9)
    assert led.epsilon(amplified=False) == pytest.approx(
        distributed_epsilon(mechanism, noise_stddev=1.5, num_clients=20, **common), rel=1e-9)
    dropped = DistributedLedger(mechanism, clip=1.0, gamma=1e-3, noise_stddev=1.5, dim=500, beta=p.beta, delta=DELTA,
                                sample_rate=0.05)
    dropped.step(20, 12, n=30)  # 40% of the shares never reached the sum
    survivors = distributed_epsilon(mechanism, noise_stddev=1.5 * math.sqrt(12 / 20), num_clients=12,
                                    sample_rate=0.05, **common)
    assert dropped.epsilon() == pytest.approx(survivors, rel=1e-9) and dropped.epsilon() > full
    again = DistributedLedger(mechanism, clip=1.0, gamma=1e-3, noise_stddev=1.5, dim=500, beta=p.beta, delta=DELTA,
                              sample_rate=0.05)
    again.load_state_dict(dropped.state_dict())
    assert again.epsilon() == dropped.epsilon() and again.rounds == 30


def test_discrete_ledger_in_dp_ledgers_reports_both_views():
    p = DistributedDpParams(mechanism="ddgauss", clip=1.0, dim=64, num_clients=10, gamma=1e-3, noise_stddev=2.0,
                            bits=24)
    led = DpLedgers(_plan("ddgauss", discrete=p))
    info = led.step(10, survivors=10)
    assert info["noise_shares"] == {"planned": 10, "in_sum": 10} and info["noise_multiplier"] == 1.0
    assert info["epsilon_server"] > info["epsilon"] > 0
    assert np.isfinite(led.epsilon_after_next()) and led.epsilon_after_next() > led.epsilon()


def test_ledgers_ride_in_the_checkpoint_and_refuse_another_noise():
    from fedlm.errors import ConfigError

    p = DistributedDpParams(mechanism="skellam", clip=1.0, dim=64, num_clients=10, gamma=1e-3, noise_stddev=2.0,
                            bits=24)
    for plan in (_plan(), _plan("skellam", discrete=p)):
        led = DpLedgers(plan)
        led.step(10, survivors=7)
        led.step(12, survivors=None)
        again = DpLedgers(plan)
        again.load(led.totals())
        assert again.epsilon() == led.epsilon() and again.rounds == 2
        assert again.epsilon_server() == led.epsilon_server()
    calibrated = DpLedgers(_plan())
    calibrated.step(10, survivors=10)
    with pytest.raises(ConfigError, match=r"original federation\.rounds"):  # z calibrated for other rounds
        DpLedgers(_plan(z=1.3)).load(calibrated.totals())
