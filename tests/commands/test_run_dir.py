"""Operator mistakes on a run directory: each is a clear error, and no completed round is lost."""

from __future__ import annotations

import json

import pytest
from tests_support import tiny_overrides

from fedlm.commands import experiment
from fedlm.commands.experiment import resume_experiment, run_experiment, run_lock
from fedlm.config import load_config
from fedlm.errors import CheckpointError


def _config(lm_data, **extra):
    return load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 2, "output.report": "false", **extra}))


def test_out_that_is_a_file_is_refused_before_the_model_loads(lm_data, tmp_path, monkeypatch) -> None:
    out = tmp_path / "a_file"
    out.write_text("not a folder")
    monkeypatch.setattr(experiment, "prepare", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(CheckpointError, match="is a file; give a folder"):
        run_experiment(_config(lm_data), out_dir=out)


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_holds_it(lm_data, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir), pytest.raises(CheckpointError, match=r"is being written by fedlm pid \d+"):
        run_experiment(_config(lm_data), out_dir=run_dir)
    assert not (run_dir / "metrics.jsonl").exists()  # the refused run wrote nothing


def test_a_deleted_metrics_log_is_rebuilt_from_the_checkpoint_on_resume(lm_data, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_experiment(_config(lm_data), out_dir=run_dir)
    log = run_dir / "metrics.jsonl"
    before = log.read_text()
    log.unlink()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):  # a fresh start would lose it
        run_experiment(_config(lm_data), out_dir=run_dir)
    resume_experiment(run_dir)  # every round done: the resume only rebuilds the log and the summary
    assert log.read_text() == before
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 2


def test_changed_data_is_refused_on_resume(lm_data, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_experiment(_config(lm_data), out_dir=run_dir)
    rows = lm_data.read_text().splitlines()
    lm_data.write_text("\n".join(rows[:-3]) + "\n")  # a client's file lost its last rows
    with pytest.raises(CheckpointError, match="data changed"):
        resume_experiment(run_dir, overrides=["federation.rounds=3"])
