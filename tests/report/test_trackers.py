"""Optional trackers: scalars picked by hand, TensorBoard event files, MLflow's SQLite store."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.errors import ConfigError
from fedlm.report.trackers import Trackers, scalars


def test_scalars_by_hand() -> None:
    record = {"type": "round", "round": 2, "train_loss": 1.5, "applied": True, "bytes_up": 10,
              "seconds": {"train": 0.5, "note": "x"}, "clients": {"a": {"train_loss": 9.0}},
              "privacy": {"epsilon": 0.7}, "lr": float("nan")}
    assert scalars(record) == {"round/train_loss": 1.5, "round/bytes_up": 10.0,
                               "round/seconds/train": 0.5, "round/privacy/epsilon": 0.7}


def test_config_rejects_unknown_and_repeated_trackers(tmp_path) -> None:
    with pytest.raises(ValueError, match="trackers"):
        load_config(None, tiny_overrides(tmp_path / "x.jsonl", **{"report.trackers": '["wandb"]'}))
    with pytest.raises(ValueError, match="twice"):
        load_config(None, tiny_overrides(tmp_path / "x.jsonl", **{"report.trackers": '["mlflow", "mlflow"]'}))


@pytest.mark.parametrize(("name", "module"), [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_missing_tracker_package_says_how_to_install(tmp_path, monkeypatch, name, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(ConfigError, match=f"pip install {name}"):
        Trackers([name], tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (fedlm[track])")
def test_tensorboard_gets_the_eval_curve(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = write_lm_jsonl(tmp_path / "d.jsonl", clients=3)
    cfg = load_config(None, tiny_overrides(path, **{"report.trackers": '["tensorboard"]', "output.report": "false"}))
    result = run_experiment(cfg, out_dir=tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("eval/eval_loss")]
    assert [s for s, _ in losses] == [0, 1, 2]
    assert losses[0][1] == pytest.approx(result.summary["initial"]["eval_loss"], rel=1e-6)
    assert losses[-1][1] == pytest.approx(result.summary["final"]["eval_loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("round/bytes_up")] == [1, 2]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (fedlm[track])")
def test_mlflow_sqlite_store_gets_the_eval_curve(tmp_path) -> None:
    import mlflow

    path = write_lm_jsonl(tmp_path / "d.jsonl", clients=3)
    cfg = load_config(None, tiny_overrides(path, **{"report.trackers": '["mlflow"]', "output.report": "false"}))
    result = run_experiment(cfg, out_dir=tmp_path / "run")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/eval_loss"))
    assert [s for s, _ in history] == [0, 1, 2]
    assert history[0][1] == pytest.approx(result.summary["initial"]["eval_loss"], rel=1e-6)
    assert history[-1][1] == pytest.approx(result.summary["final"]["eval_loss"], rel=1e-6)
