"""End to end through the command line, on tiny-llama with 3 clients for 2 rounds."""

import json
import subprocess
import sys

import pytest
import yaml
from peft import PeftModel
from tests_support import tiny_overrides, write_instruction_jsonl

from fedlm.cli.main import main
from fedlm.models import load_base_model

pytestmark = pytest.mark.slow


def _set_args(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture
def finished_run(lm_data, tmp_path):
    out = tmp_path / "run"
    argv = ["run", *_set_args(tiny_overrides(lm_data, **{"federation.clients_per_round": 3})), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_run_directory_contract(finished_run, lm_data):
    out = finished_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "adapter", "checkpoints"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("rounds_completed", "initial", "final", "clients", "communication", "privacy",
                "secure_aggregation", "robustness", "wall_seconds"):
        assert key in summary, key
    assert summary["rounds_completed"] == 2
    for key in ("eval_loss", "perplexity"):
        assert summary["initial"][key] > 0 and summary["final"][key] > 0
    comm = summary["communication"]
    assert comm["bytes_up"] == sum(r["bytes_up"] for r in comm["per_round"]) > 0
    assert len(comm["per_round"]) == 2
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["eval", "round", "eval", "round", "eval"]
    assert all(len(r["cohort"]) == 3 for r in records if r["type"] == "round")
    # the resolved config is complete and loads back
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["federation"]["rounds"] == 2 and cfg["data"]["path"] == str(lm_data)
    html = (out / "report.html").read_text()
    assert "Learning curves" in html and "Clients" in html and html.count("data:image/png;base64,") >= 3


def test_adapter_loads_with_peft_on_the_base_model(finished_run):
    base, _ = load_base_model("tiny-llama")
    model = PeftModel.from_pretrained(base, finished_run / "adapter")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_eval_generate_and_report_commands(finished_run, capsys):
    assert main(["eval", "--run", str(finished_run)]) == 0
    ev = json.loads(capsys.readouterr().out)
    summary = json.loads((finished_run / "summary.json").read_text())
    # eval re-scores every client; on the same clients it matches the run's final figures
    for cid, m in summary["clients"].items():
        assert ev["clients"][cid]["eval_loss"] == pytest.approx(m["final"]["eval_loss"], rel=1e-5)
    assert main(["generate", "--run", str(finished_run), "--prompt", "the quick", "--max-new-tokens", "5"]) == 0
    assert isinstance(capsys.readouterr().out, str)
    assert main(["report", str(finished_run)]) == 0
    capsys.readouterr()
    # --device picks where the command computes, whatever the run trained on
    assert main(["eval", "--run", str(finished_run), "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["eval_loss"] == pytest.approx(ev["eval_loss"], rel=1e-6)


def test_a_device_this_machine_lacks_is_a_one_line_error(finished_run, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["eval", "--run", str(finished_run), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and "model.device=cpu" in err


def test_data_inspect_prints_clients_and_skew(tmp_path, capsys):
    data = write_instruction_jsonl(tmp_path / "inst.jsonl", rows=80)
    overrides = tiny_overrides(data, **{"data.partition": "dirichlet", "data.num_clients": 4,
                                        "data.label_field": "category", "data.dirichlet_alpha": 0.1,
                                        "data.client_field": "null", "data.seq_len": 96})
    assert main(["data", "inspect", *_set_args(overrides)]) == 0
    out = capsys.readouterr().out
    assert "4 clients" in out and "client_0" in out and "label skew" in out


def test_user_errors_print_a_message_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedlm.cli.main", "run", "--set", "federaton.rounds=2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "did you mean 'federation'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fedlm.cli.main", "run", "-c", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
