"""``fedlm init``, ``fedlm config show``, benchmark locations and the README's Python snippet, from a folder
outside the repository."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlm.cli.main import main
from fedlm.commands.config_show import field_rows, render
from fedlm.config import load_config
from fedlm.config.loader import example_names


@pytest.fixture(autouse=True)
def _outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDLM_DATA", raising=False)


def test_init_lists_and_copies_examples(tmp_path, capsys):
    assert main(["init"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in example_names())
    assert main(["init", "dp", "work"]) == 0
    copied = tmp_path / "work" / "dp.yaml"
    assert load_config(copied) == load_config("dp")
    assert main(["init", "dp", "work"]) == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    assert main(["init", "dp", "work", "--force"]) == 0
    assert main(["init", "nope"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_init_copies_the_files_an_example_reads_beside_it(tmp_path):
    assert main(["init", "deploy", "mine/fed.yaml"]) == 0
    config = load_config(tmp_path / "mine" / "fed.yaml")
    assert Path(config.data.path) == tmp_path / "mine" / "data" / "architecture.md"
    assert Path(config.data.path).is_file()
    assert config.name == "deploy"  # the example names itself


def test_config_show_lists_every_field_with_value_default_and_doc(capsys):
    rows = {r.key: r for r in field_rows(load_config("dp"))}
    assert rows["federation.rounds"].value == "40" and rows["federation.rounds"].default == "3"
    assert rows["federation.rounds"].doc == "Federated rounds."
    assert rows["privacy.enabled"].changed and not rows["model.dtype"].changed
    assert "privacy.dp_sgd.noise_multiplier" in rows  # nested sections are flattened
    assert all(r.doc for r in rows.values()), [k for k, r in rows.items() if not r.doc]
    assert main(["config", "show", "-c", "dp", "--set", "federation.rounds=7", "--changed"]) == 0
    out = capsys.readouterr().out
    assert "* federation.rounds" in out and " 7 " in out and "Federated rounds." in out
    assert "model.dtype" not in out
    assert main(["config", "show"]) == 0
    assert "model.dtype" in capsys.readouterr().out
    assert "every field has its default" in render(field_rows(load_config()), changed_only=True)


def write_mmlu(folder: Path) -> Path:
    folder.mkdir(parents=True)
    with (folder / "mmlu_anatomy.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "choices", "answer", "error_type"])
        for i in range(3):
            writer.writerow([f"Which bone is number {i}?", str(["Femur", "Tibia", "Ulna", "Radius"]), i, "ok"])
    return folder


def test_a_benchmark_without_its_dataset_says_how_to_pass_it_before_loading(monkeypatch, capsys):
    import fedlm.models.loading

    def refuse(*args, **kwargs):
        raise AssertionError("loaded the model before finding the dataset")

    monkeypatch.setattr(fedlm.models.loading, "load_base_model", refuse)
    assert main(["eval", "--model", "smollm2-135m", "--benchmark", "mmlu-medical"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "mmlu_<subject>.csv" in err and "--path DIR" in err and "FEDLM_DATA" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_benchmark_is_found_through_path_or_fedlm_data(tmp_path, monkeypatch, capsys):
    write_mmlu(tmp_path / "datasets" / "mmlu-redux-medical")
    argv = ["eval", "--model", "tiny-llama", "--benchmark", "mmlu-medical", "--max-items", "2"]
    assert main([*argv, "--path", "datasets/mmlu-redux-medical"]) == 0
    by_path = json.loads(capsys.readouterr().out)["benchmarks"]["mmlu-medical"]
    monkeypatch.setenv("FEDLM_DATA", str(tmp_path / "datasets"))
    assert main(argv) == 0
    by_env = json.loads(capsys.readouterr().out)["benchmarks"]["mmlu-medical"]
    assert by_path == by_env


@pytest.mark.slow
def test_readme_python_snippet_works_outside_the_repository(tmp_path):
    data = tmp_path / "clients.jsonl"
    data.write_text("".join(json.dumps({"client": c, "text": f"{c} says hello to the world " * 20}) + "\n"
                            for c in ("a", "b", "c") for _ in range(6)))
    script = (
        "import fedlm\n"
        "config = fedlm.load_config('default', ['federation.rounds=1', 'model.name=tiny-llama',\n"
        "    'data.source=jsonl', 'data.path=clients.jsonl', 'data.client_field=client', 'data.min_client_chars=0',\n"
        "    'data.seq_len=32', 'federation.clients_per_round=2', 'federation.local_steps=1',\n"
        "    'output.report=false'])\n"
        "result = fedlm.run_experiment(config, out_dir='runs/py')\n"
        "print(result.summary['final']['perplexity'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) > 0
    assert (tmp_path / "runs" / "py" / "summary.json").is_file()
