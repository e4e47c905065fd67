"""Bias probe: the log-likelihood by hand, zero disparity when the groups are the same, a run."""

from __future__ import annotations

import json

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.eval.bias_probe import bias_probe, continuation_log_likelihood
from fedlm.models.loading import load_base_model
from fedlm.report.html import write_report


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama", dtype="float32", seed=0, init="pretrained", architecture={})


def test_continuation_log_likelihood_by_hand(tiny) -> None:
    model, tok = tiny
    ids = tok("ab cd", add_special_tokens=False)["input_ids"]  # bytes: a b ' ' c d
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    want = sum(float(logp[t - 1, ids[t]]) for t in range(2, 5))  # predict ' ', c, d
    assert continuation_log_likelihood(model, tok, "ab", " cd") == pytest.approx(want, abs=1e-5)


def test_same_groups_give_zero_disparity(tiny) -> None:
    model, tok = tiny
    out = bias_probe(model, tok, female=("Ann", "Bo"), male=("Bo", "Ann"), occupations=("cook", "pilot"))
    assert out["disparity"] == {"cook": pytest.approx(0.0, abs=1e-9), "pilot": pytest.approx(0.0, abs=1e-9)}
    assert out["mean_abs_disparity"] == pytest.approx(0.0, abs=1e-9)
    swapped = bias_probe(model, tok, female=("Ann",), male=("Bo",), occupations=("cook",))
    mirrored = bias_probe(model, tok, female=("Bo",), male=("Ann",), occupations=("cook",))
    assert swapped["disparity"]["cook"] == pytest.approx(-mirrored["disparity"]["cook"])


def test_run_reports_before_after_and_per_client(tmp_path) -> None:
    path = write_lm_jsonl(tmp_path / "d.jsonl", clients=3)
    cfg = load_config(None, tiny_overrides(path, **{
        "federation.rounds": 1, "eval.bias_probe": "true", "explain.keep_updates": "true"}))
    result = run_experiment(cfg, out_dir=tmp_path / "run")
    b = result.summary["bias_probe"]
    assert b["mean_abs_disparity_change"] == pytest.approx(
        b["after"]["mean_abs_disparity"] - b["before"]["mean_abs_disparity"])
    assert set(b["per_client_mean_abs_disparity"]) == {"alpha", "beta", "gamma"}  # the round's cohort
    initial = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert initial["bias_probe"] == b["before"]
    assert "Bias probe" in write_report(tmp_path / "run").read_text()
