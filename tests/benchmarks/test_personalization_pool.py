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


def _seed(seed: int) -> dict:
    # two clients, two test questions each; "b" is the worst client under every method
    items = {"local_only": {"a": [1.0, 2.0], "b": [3.0, 3.0]},
             "fedavg_global": {"a": [1.5, 2.5], "b": [3.2, 3.0]},
             "finetune": {"a": [0.9, 1.8], "b": [3.0, 2.8]}}
    ppl = {m: {c: 2.0 + sum(v) for c, v in per.items()} for m, per in items.items()}
    chosen = {m: {"lr": 0.003, "steps": 12} for m in ("local_only", "finetune")}
    return {"seed": seed, "clients": ["a", "b"], "chosen": chosen, "test_ppl": ppl, "test_items": items}


def test_the_summary_records_each_goals_paired_difference_per_question():
    paired = personalization.summarise([_seed(0), _seed(1), _seed(2)])["paired_answer_loss"]
    fedavg, finetune = paired["fedavg_beats_local_mean"], paired["finetune_beats_local_mean"]
    worst = paired["finetune_improves_worst10_over_fedavg"]
    assert fedavg["n"] == finetune["n"] == 12 and worst["n"] == 6  # 3 seeds x the questions compared
    assert fedavg["diff"]["estimate"] == pytest.approx((0.5 + 0.5 + 0.2 + 0.0) / 4)
    assert finetune["diff"]["estimate"] == pytest.approx((-0.1 - 0.2 + 0.0 - 0.2) / 4)
    assert worst["diff"]["estimate"] == pytest.approx((-0.2 - 0.2) / 2)  # client b only
