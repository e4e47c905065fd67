"""Determinism, resume and the run-directory contract on tiny-llama."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tests_support import run_crashing_in_round, tiny_overrides

from fedlm.commands.experiment import resume_experiment, run_experiment
from fedlm.config import load_config
from fedlm.errors import CheckpointError


def _strip_timings(records):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k != "seconds"}
        out.append(r)
    return out


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_same_config_and_seed_give_identical_metrics_and_adapter(lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data))
    a = run_experiment(cfg, out_dir=tmp_path / "a").run_dir
    b = run_experiment(cfg, out_dir=tmp_path / "b").run_dir
    assert _strip_timings(_metrics(a)) == _strip_timings(_metrics(b))
    ta, tb = _adapter(a), _adapter(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_a_different_seed_changes_the_run(lm_data, tmp_path):
    a = run_experiment(load_config(None, tiny_overrides(lm_data)), out_dir=tmp_path / "a").run_dir
    b = run_experiment(load_config(None, tiny_overrides(lm_data, **{"federation.seed": 5})), out_dir=tmp_path / "b").run_dir
    assert any(not torch.equal(_adapter(a)[k], _adapter(b)[k]) for k in _adapter(a))


def test_resume_after_a_crash_gives_the_same_final_adapter(lm_data, tmp_path, monkeypatch):
    cfg = load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 4}))
    full = run_experiment(cfg, out_dir=tmp_path / "full").run_dir

    run_crashing_in_round(cfg, tmp_path / "crashed", monkeypatch, at_round=3)
    crashed = tmp_path / "crashed"
    assert not (crashed / "adapter").exists()
    assert max(r["round"] for r in _metrics(crashed)) == 2

    resumed = resume_experiment(crashed).run_dir
    assert _strip_timings(_metrics(resumed)) == _strip_timings(_metrics(full))
    ta, tb = _adapter(full), _adapter(resumed)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_resume_refuses_a_changed_experiment_and_an_empty_directory(lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data))
    run = run_experiment(cfg, out_dir=tmp_path / "r").run_dir
    with pytest.raises(CheckpointError, match="different config"):
        resume_experiment(run, overrides=["federation.lr=0.5"])
    with pytest.raises(CheckpointError, match="already holds a run"):
        run_experiment(cfg, out_dir=run)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resume_experiment(tmp_path / "empty")


def test_resume_can_extend_the_number_of_rounds(lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data))
    run = run_experiment(cfg, out_dir=tmp_path / "r").run_dir
    result = resume_experiment(run, overrides=["federation.rounds=3"])
    assert result.summary["rounds_completed"] == 3


def test_rejected_updates_are_counted_and_the_round_goes_on(lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data, **{"federation.max_update_norm": 1e-12}))
    summary = run_experiment(cfg, out_dir=tmp_path / "r").summary
    assert summary["robustness"]["rejected"] == 6  # 3 clients x 2 rounds, all over the norm limit
    assert summary["robustness"]["by_reason"] == {"norm": 6}
    records = [r for r in _metrics(tmp_path / "r") if r["type"] == "round"]
    assert all(not r["applied"] for r in records)


def test_too_few_updates_can_abort_with_a_message(lm_data, tmp_path):
    from fedlm.errors import FedlmError

    cfg = load_config(None, tiny_overrides(lm_data, **{"federation.max_update_norm": 1e-12,
                                                       "federation.on_too_few_updates": "abort"}))
    with pytest.raises(FedlmError, match=r"fewer than federation\.min_updates"):
        run_experiment(cfg, out_dir=tmp_path / "r")
