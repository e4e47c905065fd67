"""``benchmarks.personalization --pool``: seeds recorded one at a time pool into one summary."""

import argparse

import pytest

from benchmarks import personalization


def _args(**changes) -> argparse.Namespace:
    base = {"model": "smollm2-135m", "clients": 9, "examples": 32, "lrs": [0.001, 0.003], "seeds": "0",
            "jobs": 1, "threads": 1, "no_record": False, "pool": False, "quick": False, "report_on": "test"}
    return argparse.Namespace(**{**base, **changes})


def _row(seed: int, **changes) -> dict:
    settings = {k: v for k, v in vars(_args(**changes)).items() if k != "medquad"}
    return {"seed_run": {"seed": seed}, "settings": settings}


def test_seeds_recorded_in_separate_runs_pool_in_the_asked_order(monkeypatch):
    rows = [_row(1, seeds="1", threads=2), _row(0, seeds="0", jobs=3), _row(2, seeds="2")]
    monkeypatch.setattr(personalization, "read_results", lambda name: rows)
    runs = personalization.pooled_runs(_args(seeds="0,1,2", pool=True), [0, 1, 2])
    assert [r["seed"] for r in runs] == [0, 1, 2]


def test_a_run_of_other_settings_does_not_pool(monkeypatch):
    rows = [_row(0), _row(1, examples=24)]
    monkeypatch.setattr(personalization, "read_results", lambda name: rows)
    with pytest.raises(SystemExit, match=r"no recorded run of seed\(s\) \[1\]"):
        personalization.pooled_runs(_args(pool=True), [0, 1])


def test_a_seed_recorded_twice_is_refused(monkeypatch):
    monkeypatch.setattr(personalization, "read_results", lambda name: [_row(0), _row(0, threads=2)])
    with pytest.raises(SystemExit, match="seed 0 is recorded twice"):
        personalization.pooled_runs(_args(pool=True), [0])
