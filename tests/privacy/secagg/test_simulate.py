import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggAborted, run_round
from fedlm.privacy.secagg.quantize import sum_error_bound
from fedlm.privacy.secagg.server import PHASES


def _vectors(n, length=1000, seed=0):
    rng = np.random.default_rng(seed)
    return {f"c{i}": rng.uniform(-1.0, 1.0, length) for i in range(n)}


def _bound(weight, cfg):
    return sum_error_bound(weight, bits=cfg.bits, clip=cfg.clip_range)


@pytest.mark.parametrize("n", [3, 10, 50])
def test_sum_matches_plain_sum_within_quantisation_bound(n):
    cfg = SecAggConfig(enabled=True, seed=n)
    vecs = _vectors(n)
    got, stats = run_round(vecs, config=cfg)
    err = np.abs(got - sum(vecs.values())).max()
    assert 0 < err <= _bound(n, cfg)
    assert stats["survivors"] == n and stats["total_weight"] == n
    assert stats["upload_expansion"] < 1.01  # m = 32: one uint32 per value plus a small header
    assert set(stats["phases"]) == set(PHASES)
    assert all(p["bytes_up"] > 0 and p["bytes_down"] > 0 for p in stats["phases"].values())
    if n == 50:
        # sparse graph, not complete; t = floor((34 + floor(0.2 * 34)) / 2) + 1 (corrupt_fraction 0.2)
        assert stats["degree"] == 34 and stats["threshold"] == 21


def test_weighted_sum_reveals_only_the_total_weight():
    cfg = SecAggConfig(max_weight=9, bits=12, seed=1)
    vecs = _vectors(6, length=200)
    weights = {c: i + 1 for i, c in enumerate(vecs)}
    got, stats = run_round(vecs, config=cfg, weights=weights)
    want = sum(weights[c] * v for c, v in vecs.items())
    assert stats["total_weight"] == 21
    assert np.abs(got - want).max() <= _bound(21, cfg)


@pytest.mark.parametrize("phase", PHASES)
def test_one_dropout_at_each_phase(phase):
    vecs = _vectors(10, length=300)
    got, stats = run_round(vecs, config=SecAggConfig(seed=2), dropouts={phase: {"c3"}})
    # Dropping after its masked input arrived (before signing U3 or unmasking) keeps c3 in the sum.
    included = [c for c in vecs if c != "c3" or phase in ("consistency", "unmasking")]
    assert stats["survivor_ids"] == included
    assert np.abs(got - sum(vecs[c] for c in included)).max() <= _bound(
        len(included), SecAggConfig()
    )
    assert stats["phases"][phase]["dropouts"] == 1


def test_dropouts_spread_over_phases_on_a_sparse_graph():
    cfg = SecAggConfig(neighbours=8, seed=4)  # n = 40, k = 8, t = 5
    vecs = _vectors(40, length=300)
    drops = {"share_keys": {"c1"}, "masked_input": {"c2", "c17"}, "unmasking": {"c30"}}
    got, stats = run_round(vecs, config=cfg, dropouts=drops)
    assert stats["degree"] == 8 and stats["threshold"] == 5
    included = [c for c in vecs if c not in {"c1", "c2", "c17"}]
    assert stats["survivor_ids"] == included
    assert np.abs(got - sum(vecs[c] for c in included)).max() <= _bound(37, cfg)


def test_random_dropouts_from_config():
    cfg = SecAggConfig(dropout_rate=0.15, seed=11)
    vecs = _vectors(20, length=100)
    got, stats = run_round(vecs, config=cfg)
    assert stats["survivors"] < 20  # with this seed some client drops
    included = stats["survivor_ids"]
    assert np.abs(got - sum(vecs[c] for c in included)).max() <= _bound(len(included), cfg)


@pytest.mark.parametrize(
    "phase,dropped",
    [
        ("advertise_keys", {"c0", "c1", "c2"}),
        ("share_keys", {"c0", "c1", "c2"}),
        ("masked_input", {"c0", "c1", "c2"}),
        ("unmasking", {"c0", "c1"}),  # 5 inputs arrived but only 3 holders answer; t = 3
    ],
)
def test_too_many_dropouts_abort_with_nothing_revealed(phase, dropped):
    vecs = _vectors(5, length=50)
    with pytest.raises(SecAggAborted) as e:
        run_round(vecs, config=SecAggConfig(seed=0), dropouts={phase: dropped})
    assert e.value.reason == "below_threshold"
    assert e.value.phase == phase
    assert e.value.stats["survivors"] == 0 and "total_weight" not in e.value.stats


def test_config_problems_are_reported():
    with pytest.raises(ValueError):
        run_round({"a": np.zeros(3), "b": np.zeros(4)}, config=SecAggConfig())
    with pytest.raises(ValueError):
        run_round(_vectors(3, 5), config=SecAggConfig(), dropouts={"later": {"c0"}})
    with pytest.raises(ValueError):  # 2^20 cannot hold 100 * (2^16 - 1)
        run_round(_vectors(100, 5), config=SecAggConfig(modulus_bits=20))
