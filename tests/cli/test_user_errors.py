"""Mistakes a new user makes get one line that says what to do, exit status 2, and cost no model load."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.cli.main import main


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command loads a model before refusing its arguments."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the arguments were checked")

    import fedlm.commands.evaluate
    import fedlm.commands.experiment

    monkeypatch.setattr(fedlm.commands.experiment, "load_base_model", refuse)
    monkeypatch.setattr(fedlm.commands.evaluate, "load_base_model", refuse)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors")
    data = write_lm_jsonl(root / "clients.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDLM_CACHE", str(root / "cache"))
        assert main(["run", *_set_args(tiny_overrides(data)), "--set", "output.report=false",
                     "--out", str(root / "run")]) == 0
    return root / "run"


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_out_that_is_a_file_is_refused_before_anything_loads(tmp_path, lm_data, capsys, no_model_load):
    file = tmp_path / "taken.txt"
    file.write_text("x")
    assert main(["run", *_set_args(tiny_overrides(lm_data)), "--out", str(file)]) == 2
    assert "is a file" in _error(capsys)
    assert main(["run", *_set_args(tiny_overrides(lm_data)), "--out", str(file / "run")]) == 2
    assert "which is a file" in _error(capsys)


def test_a_config_that_is_not_utf8_names_the_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: ok\n# caf\u00e9 in Latin-1\n".encode("latin-1"))
    assert main(["config", "show", "-c", str(bad)]) == 2
    err = _error(capsys)
    assert "not UTF-8" in err and "line 2" in err and "save it as UTF-8" in err


@pytest.mark.parametrize("argv", [
    ["eval", "--run", "{file}"], ["generate", "--run", "{file}", "--prompt", "x"], ["report", "{file}"],
    ["audit", "{file}"], ["export", "{file}", "--merged", "{tmp}/m"], ["explain", "contribution", "{file}"],
    ["run", "--resume", "{file}"],
])
def test_a_file_where_a_run_directory_belongs(argv, tmp_path, capsys, no_model_load):
    file = tmp_path / "summary.json"
    file.write_text("{}")
    assert main([a.format(file=file, tmp=tmp_path) for a in argv]) == 2
    assert "is a file" in _error(capsys)


@pytest.mark.parametrize("command", [["report"], ["eval", "--run"], ["run", "--resume"]])
def test_a_missing_run_directory(command, tmp_path, capsys):
    assert main([*command, str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in _error(capsys)


@pytest.mark.slow
def test_eval_on_a_truncated_adapter(run_dir, tmp_path, capsys, no_model_load):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert main(["eval", "--run", str(copy)]) == 2
    err = _error(capsys)
    assert "truncated or damaged" in err and "--resume" in err
    (copy / "adapter" / "adapter_config.json").write_text("{")
    assert main(["eval", "--run", str(copy)]) == 2
    assert "not JSON" in _error(capsys)


@pytest.mark.slow
def test_resume_refuses_flags_it_would_ignore(run_dir, tmp_path, lm_data, capsys, no_model_load):
    assert main(["run", "--resume", str(run_dir), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "would be ignored" in _error(capsys)
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nmodel: {name: tiny-llama}\n")
    assert main(["run", "--resume", str(run_dir), "-c", str(other)]) == 2
    err = _error(capsys)
    assert "another experiment" in err and "name: run 'clients', -c 'other'" in err


@pytest.mark.slow
def test_resume_with_the_runs_own_config_applies_it(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    own = tmp_path / "same.yaml"
    own.write_text((copy / "config.yaml").read_text())
    assert main(["run", "--resume", str(copy), "-c", str(own), "--set", "federation.rounds=3"]) == 0
    assert "is the experiment of" in capsys.readouterr().err
    import json

    assert json.loads((copy / "summary.json").read_text())["rounds_completed"] == 3


def test_an_unset_fedlm_data_is_named_before_anything_loads(tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.delenv("FEDLM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-c", "medical"]) == 2
    err = _error(capsys)
    assert "FEDLM_DATA is not set" in err and "export FEDLM_DATA=" in err and "--set data.path=PATH" in err
    assert main(["data", "inspect", "-c", "personalize"]) == 2
    assert "FEDLM_DATA" in _error(capsys)
    assert main(["config", "show", "-c", "medical"]) == 0  # showing the config needs no data
    assert "${FEDLM_DATA}/medquad.jsonl" in capsys.readouterr().out
