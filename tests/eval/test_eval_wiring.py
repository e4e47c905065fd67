"""The harness wired in: benchmarks at the end of a run, and `fedlm eval --benchmark` on a
run or on a base model alone (tiny-llama, benchmark files written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import tiny_overrides

from fedlm.cli.main import main
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

CSV = (
    "question,choices,answer,error_type,source,correct_answer,potential_reason\n"
    "\"Which bone is in the arm?\",\"['Femur', 'Humerus', 'Tibia', 'Fibula']\",1,ok,src,,\n"
    "Dropped?,\"['a', 'b', 'c', 'd']\",0,bad_question_clarity,src,,why\n"
    "Which organ pumps blood?,\"['Heart', 'Liver', 'Lung', 'Skin']\",0,ok,src,,\n"
)


@pytest.fixture
def mmlu_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "mmlu_anatomy.csv").write_text(CSV, encoding="utf-8")
    return folder


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_base_model_alone(mmlu_dir, capsys):
    assert main(["eval", "--model", "tiny-llama", "--benchmark", "mmlu-medical", "--path", str(mmlu_dir)]) == 0
    out = _json_out(capsys)
    m = out["benchmarks"]["mmlu-medical"]
    assert out["run"] is None and out["model"] == "tiny-llama"
    assert m["count"] == 2 and 0.0 <= m["accuracy"] <= 1.0  # the error_type row is left out


@pytest.mark.slow
def test_run_scores_benchmarks_at_the_end_and_eval_rescores_the_run(lm_data, mmlu_dir, tmp_path, capsys):
    config = load_config(None, tiny_overrides(lm_data, **{
        "eval_harness.enabled": "true", "eval_harness.initial": "true",
        "eval_harness.benchmarks": "[mmlu-medical]", "eval_harness.mmlu_path": str(mmlu_dir),
        "output.report": "false"}))
    run = run_experiment(config, out_dir=tmp_path / "run")
    final = run.summary["benchmarks"]["mmlu-medical"]
    assert final["count"] == 2 and run.summary["benchmarks_initial"]["mmlu-medical"]["count"] == 2
    capsys.readouterr()
    assert main(["eval", "--run", str(run.run_dir), "--benchmark", "mmlu-medical"]) == 0
    again = _json_out(capsys)["benchmarks"]["mmlu-medical"]
    assert again["accuracy"] == final["accuracy"] and again["count"] == 2  # the saved adapter scores the same


def test_eval_rejects_ambiguous_requests(mmlu_dir, tmp_path, capsys):
    assert main(["eval", "--model", "tiny-llama", "--run", str(tmp_path), "--benchmark", "mmlu-medical"]) == 2
    assert "exactly one of --run" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-llama", "--benchmark", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny-llama", "--path", str(mmlu_dir)]) == 2
    assert "--path names one dataset folder" in capsys.readouterr().err
