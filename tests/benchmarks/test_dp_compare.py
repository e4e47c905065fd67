"""The mechanism comparison's bookkeeping: which seeds run, and a gap paired seed by seed."""

import pytest

from benchmarks import _dp_runs

# hand-picked held-out losses: seed -> mechanism -> loss
LOSSES = {4: {"central": 3.0, "ddgauss": 3.03}, 5: {"central": 2.0, "ddgauss": 1.98}}


def _fake_row(mechanism, eps, seed, base, out, **_kw):
    return {"mechanism": mechanism, "epsilon_target": eps, "seed": seed, "eval_loss": LOSSES[seed][mechanism],
            "epsilon": eps, "epsilon_server": eps, "noise_multiplier": 1.0, "bytes_up_per_round": 10.0,
            "seconds_per_round": 1.0, "aborted_rounds": 0}


@pytest.fixture
def compare(monkeypatch):
    monkeypatch.setattr(_dp_runs, "run_row", _fake_row)
    return _dp_runs.compare


def test_later_seeds_without_the_baseline_give_a_gap_paired_by_seed(compare):
    out = compare(seeds=2, first_seed=4, baseline=False, rounds=2, sdist=None,
                  mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full")
    assert sorted({r["seed"] for r in out["runs"]}) == [4, 5]
    assert "none" not in {r["mechanism"] for r in out["runs"]}
    assert out["splits"]["seeds"] == [4, 5]
    # seed 4: 3.03 / 3.0 - 1 = +1%; seed 5: 1.98 / 2.0 - 1 = -1%; mean 0
    assert out["relative_loss_gap_vs_central"]["ddgauss_8"]["values"] == pytest.approx([0.01, -0.01])
    assert out["gap_ddgauss_8"] == pytest.approx(0.0, abs=1e-12)
    assert out["rows"]["ddgauss_8"]["added_seconds_per_round"] is None  # no baseline to subtract


def test_the_baseline_row_runs_first_by_default(compare, monkeypatch):
    monkeypatch.setitem(LOSSES[4], "none", 2.5)
    out = compare(seeds=1, first_seed=4, rounds=2, sdist=None,
                  mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full")
    assert [r["mechanism"] for r in out["runs"]] == ["none", "central", "ddgauss"]
    assert out["rows"]["ddgauss_8"]["added_seconds_per_round"]["mean"] == 0.0


def test_pooling_two_runs_of_disjoint_seeds_equals_one_run_of_both(compare):
    both = compare(seeds=2, first_seed=4, baseline=False, rounds=2, sdist=None,
                   mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full")
    parts = [compare(seeds=1, first_seed=seed, baseline=False, rounds=2, sdist=None,
                     mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full") for seed in (4, 5)]
    pooled = _dp_runs.merge(parts)
    assert pooled["relative_loss_gap_vs_central"] == both["relative_loss_gap_vs_central"]
    assert pooled["splits"]["seeds"] == [4, 5] and pooled["seeds"] == 2
    assert pooled["goal_status"] == both["goal_status"]


def test_pooling_refuses_a_seed_twice_or_two_settings(compare):
    one = compare(seeds=1, first_seed=4, baseline=False, rounds=2, sdist=None,
                  mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full")
    with pytest.raises(SystemExit, match="appears twice"):
        _dp_runs.merge([one, one])
    other = compare(seeds=1, first_seed=5, baseline=False, rounds=3, sdist=None,
                    mechanisms=("central", "ddgauss"), epsilons=(8.0,), participation="full")
    with pytest.raises(SystemExit, match="differ in rounds"):
        _dp_runs.merge([one, other])
