import json
import math

import dp_accounting as dpa
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedlm.errors import ConfigError
from fedlm.privacy.accountant import (
    PLD_INTERVAL,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    check_delta,
    pld_interval,
)
from fedlm.privacy.clipping import split_noise_multiplier

DELTA = 1e-5


def _direct(kind: str, event: dpa.DpEvent, rounds: int, *, replace_one: bool = False) -> float:
    if kind == "pld":
        acc = PLDAccountant()
    elif replace_one:
        acc = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    else:
        acc = RdpAccountant()
    return acc.compose(event, rounds).get_epsilon(DELTA)


CASES = [
    (
        "rdp",
        "poisson",
        {"sample_rate": 0.05},
        dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)),
        False,
    ),
    (
        "pld",
        "poisson",
        {"sample_rate": 0.05},
        dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)),
        False,
    ),
    ("rdp", "none", {}, dpa.GaussianDpEvent(1.1), False),
    ("pld", "none", {}, dpa.GaussianDpEvent(1.1), False),
    # Fixed-size cohorts: replace-one neighbours, sensitivity 2C -> multiplier z / 2.
    (
        "rdp",
        "fixed",
        {"cohort_size": 50, "population": 1000},
        dpa.SampledWithoutReplacementDpEvent(1000, 50, dpa.GaussianDpEvent(0.55)),
        True,
    ),
]


@pytest.mark.parametrize(("kind", "sampling", "kw", "event", "replace_one"), CASES)
def test_epsilon_equals_dp_accounting_called_directly(kind, sampling, kw, event, replace_one):
    acc = PrivacyAccountant(kind, sampling, noise_multiplier=1.1, delta=DELTA, **kw)
    # Without sampling each round is costly for PLD (wide loss distribution): fewer rounds.
    rounds = 25 if (kind, sampling) == ("pld", "none") else 50
    acc.step(rounds - 21)
    acc.step()
    acc.step(20)
    assert acc.rounds == rounds
    assert acc.epsilon() == pytest.approx(
        _direct(kind, event, rounds, replace_one=replace_one), rel=1e-9
    )


def test_poisson_rate_from_cohort_and_population():
    acc = PrivacyAccountant(
        "rdp", "poisson", noise_multiplier=1.0, delta=DELTA, cohort_size=10, population=1000
    )
    assert acc.sample_rate == pytest.approx(0.01)


def test_pld_with_fixed_sampling_is_rejected_with_the_fix():
    assert not PLDAccountant().supports(
        dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(1.0))
    )
    with pytest.raises(ConfigError, match="use accountant='rdp'"):
        PrivacyAccountant(
            "pld", "fixed", noise_multiplier=1.0, delta=1e-5, cohort_size=10, population=1000
        )


def test_adaptive_rounds_compose_both_releases_and_cost_the_same_as_z():
    z, sigma_b = 1.0, 2.5
    z_delta = split_noise_multiplier(z, sigma_b)
    acc = PrivacyAccountant(
        "rdp",
        "poisson",
        noise_multiplier=z,
        delta=DELTA,
        sample_rate=0.02,
        clipped_count_stddev=sigma_b,
    )
    event = acc.round_event()
    assert event == dpa.PoissonSampledDpEvent(
        0.02, dpa.ComposedDpEvent([dpa.GaussianDpEvent(z_delta), dpa.GaussianDpEvent(2 * sigma_b)])
    )
    acc.step(100)
    plain = PrivacyAccountant("rdp", "poisson", noise_multiplier=z, delta=DELTA, sample_rate=0.02)
    plain.step(100)
    assert acc.epsilon() == pytest.approx(plain.epsilon(), rel=1e-9)
    assert acc.epsilon() == pytest.approx(_direct("rdp", event, 100), rel=1e-12)


def test_adaptive_pld_none_composes_two_gaussians():
    acc = PrivacyAccountant(
        "pld", "none", noise_multiplier=2.0, delta=DELTA, clipped_count_stddev=3.0
    )
    assert isinstance(acc.round_event(), dpa.ComposedDpEvent)
    acc.step(10)
    direct = _direct("pld", acc.round_event(), 10)
    assert acc.epsilon() == pytest.approx(direct, rel=1e-9)
    plain = PrivacyAccountant("pld", "none", noise_multiplier=2.0, delta=DELTA)
    plain.step(10)
    assert acc.epsilon() == pytest.approx(plain.epsilon(), rel=1e-2)


def test_adaptive_pld_poisson_uses_the_equivalent_single_gaussian():
    acc = PrivacyAccountant(
        "pld",
        "poisson",
        noise_multiplier=1.0,
        delta=DELTA,
        sample_rate=0.05,
        clipped_count_stddev=2.0,
    )
    inner = acc.round_event().event
    assert isinstance(inner, dpa.GaussianDpEvent)
    assert inner.noise_multiplier == pytest.approx(1.0)


@pytest.mark.parametrize(("kind", "rounds"), [("rdp", 1000), ("pld", 40)])
def test_calibration_lands_at_or_just_under_target(kind, rounds):
    target = 3.0
    z = calibrate_noise_multiplier(target, DELTA, rounds, kind=kind, sample_rate=0.01)
    acc = PrivacyAccountant(kind, "poisson", noise_multiplier=z, delta=DELTA, sample_rate=0.01)
    acc.step(rounds)
    assert 0.99 * target <= acc.epsilon() <= target


def test_calibration_accounts_for_rounds_already_spent():
    target = 4.0
    z = calibrate_noise_multiplier(target, DELTA, 200, sample_rate=0.02, spent=[(0.8, 100)])
    acc = PrivacyAccountant("rdp", "poisson", noise_multiplier=0.8, delta=DELTA, sample_rate=0.02)
    acc.step(100)
    acc.set_noise_multiplier(z)
    acc.step(200)
    assert 0.99 * target <= acc.epsilon() <= target


@pytest.mark.parametrize("target", [0.0, -1.0, float("nan")])
def test_calibration_rejects_nonpositive_target(target):
    with pytest.raises(ConfigError, match="target_epsilon"):
        calibrate_noise_multiplier(target, DELTA, 10, sample_rate=0.1)


def test_calibration_rejects_unreachable_target():
    # No amplification, 10^6 rounds: even z = 1000 spends more than 0.01.
    with pytest.raises(ConfigError, match="unreachable"):
        calibrate_noise_multiplier(0.01, DELTA, 1_000_000, sampling="none")


def test_calibration_with_adaptive_checks_the_split():
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        calibrate_noise_multiplier(1.0, DELTA, 1000, sample_rate=0.01, clipped_count_stddev=0.1)


def test_delta_must_be_below_one_over_num_clients():
    with pytest.raises(ConfigError, match=r"delta must be below 1/num_clients = 0\.01"):
        PrivacyAccountant(
            "rdp", "poisson", noise_multiplier=1.0, delta=0.01, sample_rate=0.1, population=100
        )
    check_delta(0.009, 100)
    with pytest.raises(ConfigError, match="delta"):
        check_delta(0.0, None)


@pytest.mark.parametrize("z", [0.0, -0.5, float("inf")])
def test_nonpositive_noise_multiplier_rejected(z):
    with pytest.raises(ConfigError, match="noise_multiplier"):
        PrivacyAccountant("rdp", "poisson", noise_multiplier=z, delta=DELTA, sample_rate=0.1)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_sample_rate_outside_unit_interval_rejected(q):
    with pytest.raises(ConfigError, match="sample_rate"):
        PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=q)


def test_unknown_kind_and_sampling_rejected():
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyAccountant("moments", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.1)
    with pytest.raises(ConfigError, match="sampling"):
        PrivacyAccountant("rdp", "shuffle", noise_multiplier=1.0, delta=DELTA, sample_rate=0.1)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_state_round_trip_gives_identical_epsilon(kind):
    acc = PrivacyAccountant(kind, "poisson", noise_multiplier=1.2, delta=DELTA, sample_rate=0.03)
    acc.step(37)
    acc.set_noise_multiplier(1.5)  # a recalibrated run: two segments
    acc.step(5)
    state = json.loads(json.dumps(acc.state_dict()))
    resumed = PrivacyAccountant(
        kind, "poisson", noise_multiplier=1.2, delta=DELTA, sample_rate=0.03
    )
    resumed.load_state_dict(state)
    assert resumed.rounds == 42
    assert resumed.noise_multiplier == 1.5
    assert resumed.epsilon() == acc.epsilon()
    acc.step(3)
    resumed.step(3)
    assert resumed.epsilon() == acc.epsilon()


def test_load_state_with_other_settings_is_rejected():
    acc = PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.03)
    other = PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.05)
    with pytest.raises(ConfigError, match="sample_rate"):
        other.load_state_dict(acc.state_dict())


def test_segments_with_different_z_compose_exactly():
    acc = PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.1)
    acc.step(10)
    acc.set_noise_multiplier(2.0)
    acc.step(20)
    direct = (
        RdpAccountant()
        .compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)), 10)
        .compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(2.0)), 20)
        .get_epsilon(DELTA)
    )
    assert acc.epsilon() == pytest.approx(direct, rel=1e-12)


def test_epsilon_after_is_a_pure_look_ahead():
    acc = PrivacyAccountant("rdp", "poisson", noise_multiplier=1.0, delta=DELTA, sample_rate=0.1)
    assert acc.epsilon() == 0.0
    acc.step(5)
    before = acc.epsilon()
    ahead = acc.epsilon_after(5)
    assert acc.rounds == 5 and acc.epsilon() == before
    acc.step(5)
    assert acc.epsilon() == pytest.approx(ahead)
    assert ahead > before > 0 and math.isfinite(ahead)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Epsilon of a mu-GDP mechanism at delta (Balle and Wang 2018's analytic formula)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def delta_at(eps: float) -> float:  # e^eps Phi(b) in logs: eps reaches 1e5 here
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2))

    return brentq(lambda e: delta_at(e) - delta, 0.0, mu * mu / 2 + 20 * mu + 10)


def test_pld_keeps_the_default_grid_where_it_is_cheap():
    assert pld_interval([(0.826, 40)]) == PLD_INTERVAL
    assert pld_interval([]) == PLD_INTERVAL


@pytest.mark.parametrize(("z", "rounds"), [(0.01, 20), (0.1, 20)])
def test_pld_at_a_small_noise_multiplier_stays_small_and_never_below_the_truth(z, rounds):
    # Without the coarser grid, z = 0.01 over 20 rounds asks dp-accounting for 15.6 GiB.
    # T unsampled Gaussian rounds are exactly one Gaussian with mu = sqrt(T) / z.
    assert pld_interval([(z, rounds)]) > PLD_INTERVAL
    acc = PrivacyAccountant("pld", "none", noise_multiplier=z, delta=1e-5, population=120)
    acc.step(rounds)
    exact = _exact_gaussian_epsilon(math.sqrt(rounds) / z, 1e-5)
    assert exact <= acc.epsilon() <= exact * 1.01
