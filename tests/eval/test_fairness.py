"""Fairness statistics across clients, worked by hand."""

from __future__ import annotations

import math

import pytest

from fedlm.eval.fairness import client_fairness, fairness_stats, jain_index


def test_jain_index_by_hand():
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # 1/n: one client has it all
    assert jain_index([1.0, 3.0]) == pytest.approx(16 / 20)  # (1+3)^2 / (2 * (1+9))
    assert math.isnan(jain_index([]))


def test_fairness_stats_by_hand():
    vals = {f"c{i}": float(v) for i, v in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])}
    s = fairness_stats(vals)
    assert s["mean"] == pytest.approx(65.0)
    assert s["std"] == pytest.approx(math.sqrt(sum((x - 65) ** 2 for x in vals.values()) / 12))
    assert s["worst_10pct"] == pytest.approx((120 + 110) / 2)  # ceil(1.2) = 2 worst (highest) clients
    assert s["worst_clients"] == ["c11", "c10"]
    assert s["jain"] == pytest.approx(780**2 / (12 * sum(x * x for x in vals.values())))
    higher = fairness_stats(vals, lower_is_better=False)  # accuracy-like: the worst are the lowest
    assert higher["worst_10pct"] == pytest.approx(15.0)


def test_fairness_stats_skip_non_finite_and_empty():
    s = fairness_stats({"a": 2.0, "b": float("nan"), "c": 4.0})
    assert s["n"] == 2 and s["skipped"] == 1 and s["worst_10pct"] == 4.0
    assert fairness_stats({})["mean"] is None


def test_client_fairness_reads_eval_records():
    out = client_fairness({"a": {"perplexity": 2.0, "eval_loss": 0.5, "token_accuracy": 0.4},
                           "b": {"perplexity": 4.0, "eval_loss": 1.0, "token_accuracy": 0.2}})
    assert out["perplexity"]["worst_clients"] == ["b"] and out["token_accuracy"]["worst_clients"] == ["b"]
