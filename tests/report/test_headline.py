"""The end-of-run headline rows, from summary.json alone."""

from __future__ import annotations

from fedlm.report.headline import headline_rows


def test_a_plain_run_has_no_capability_rows() -> None:
    assert headline_rows({"robustness": {"rejected": 0, "aggregator": "fedavg", "attack": "none"}}) == []


def test_each_capability_gives_its_headline() -> None:
    summary = {
        "privacy": {"epsilon": 2.5, "delta": 1e-5, "accountant": "rdp", "stop_reason": None},
        "robustness": {"aggregator": "median", "attack": "sign_flip", "attack_success_rate": None, "rejected": 2},
        "personal": {"method": "ditto", "fairness": {"global": {"perplexity": {"mean": 10.0, "worst_10pct": 20.0}},
                                                     "personal": {"perplexity": {"mean": 8.0, "worst_10pct": 15.0}}}},
        "secure_aggregation": {"survivors": 9, "cohort": 10, "rounds": 2, "aborted_rounds": []},
        "contribution": {"method": "gtg", "cumulative": {"a": 0.5, "b": -0.1, "c": 0.2}},
    }
    rows = dict(headline_rows(summary))
    assert rows["privacy: epsilon (delta)"] == "2.5 (1e-05), rdp"
    assert rows["robustness"] == "median against sign_flip, 2 updates rejected"
    assert rows["personal (ditto): perplexity mean / worst 10%"] == "8 / 15 vs global 10 / 20"
    assert rows["secure aggregation: survivors / cohort"] == "9 / 10 over 2 rounds"
    assert rows["contribution (gtg): top / bottom"] == "a +0.5 / b -0.1"
