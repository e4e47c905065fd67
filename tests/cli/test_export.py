"""Portable artefacts and the commands that read a finished run: export, generate, eval.

One tiny-llama run with personal modules (FedPer: ``v_proj`` stays on each client) is made
once for the module; every test reads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.cli.main import main
from fedlm.commands.evaluate import load_run_model
from fedlm.commands.generate import Sampling

pytestmark = pytest.mark.slow


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    data = write_lm_jsonl(root / "clients.jsonl")
    extra = {"personal.method": "modules", "personal.local_modules": "[v_proj]", "federation.clients_per_round": 4,
             "eval.max_clients": 3}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDLM_CACHE", str(root / "cache"))
        assert main(["run", *_set_args(tiny_overrides(data, **extra)), "--out", str(root / "run")]) == 0
    return root / "run"


def test_merged_export_loads_offline_in_a_fresh_process_and_generates(run_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "base_model.json"):
        assert (out / name).is_file(), name
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDLM")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "enc = t('the quick', return_tensors='pt')\n"
        "out = m.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=t.pad_token_id)\n"
        "assert out.shape[1] == enc['input_ids'].shape[1] + 4\n"
        "torch.save(m(**enc).logits, sys.argv[2])\n"
    )
    logits_file = tmp_path / "logits.pt"
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(logits_file)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the merged model is the run's model: base + adapter (+ residuals), same logits
    _, model, tok = load_run_model(run_dir)
    with torch.no_grad():
        expected = model(**tok("the quick", return_tensors="pt")).logits
    assert torch.allclose(torch.load(logits_file), expected, atol=1e-5)


def test_model_cards_are_filled_from_the_summary(run_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for card in (out / "README.md", run_dir / "adapter" / "README.md"):
        text = card.read_text()
        assert "More Information Needed" not in text
        for needle in ("## Training data", "4 clients", "rounds: 2 of 2", "## Privacy", "None: no differential privacy",
                       "## Secure aggregation", "Off:", "## Defences", "aggregator: fedavg", "## Metrics",
                       f"{summary['final']['perplexity']:.4g}", "tiny-llama"):
            assert needle in text, (card, needle)
    assert "library_name: transformers" in (out / "README.md").read_text()
    assert "library_name: peft" in (run_dir / "adapter" / "README.md").read_text()


def test_adapter_config_names_its_base_and_records_the_weights(run_dir):
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    record = json.loads((run_dir / "adapter" / "base_model.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama" == record["name"]
    assert "random initialisation with seed 0" in record["source"]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
def test_client_export_is_that_clients_personal_adapter(run_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from fedlm.models import load_base_model

    out = tmp_path / "alpha"
    assert main(["export", str(run_dir), "--client", "alpha", str(out)]) == 0
    own, shared = load_file(out / "adapter_model.safetensors"), load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert own.keys() == shared.keys()
    differ = {k for k in own if not torch.equal(own[k], shared[k])}
    assert differ and all("v_proj" in k for k in differ)  # only the personal modules are the client's own
    base, _ = load_base_model("tiny-llama")
    PeftModel.from_pretrained(base, out)  # a plain PEFT adapter
    assert "client alpha" in (out / "README.md").read_text()
    # generate --client uses it: greedy text from the personal model, reproducibly
    assert main(["generate", "--run", str(run_dir), "--client", "alpha", "--prompt", "the", "--max-new-tokens", "3"]) == 0


def test_client_export_errors_name_the_fix(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--client", "nobody", str(tmp_path / "x")]) == 2
    assert "no client 'nobody'" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f.txt").write_text("x")
    assert main(["export", str(run_dir), "--merged", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_generate_samples_with_temperature_and_top_p_and_stays_greedy_by_default(run_dir, capsys):
    argv = ["generate", "--run", str(run_dir), "--prompt", "the quick", "--max-new-tokens", "6"]
    assert main(argv) == 0 and main(argv) == 0
    greedy = capsys.readouterr().out.splitlines()
    assert greedy[0] == greedy[1]
    sampled = []
    for seed in ("1", "2", "3"):
        assert main([*argv, "--temperature", "5.0", "--top-p", "0.95", "--seed", seed]) == 0
        sampled.append(capsys.readouterr().out)
    assert len(set(sampled)) > 1  # high temperature: different seeds, different text
    assert main([*argv, "--top-p", "0.5"]) == 2
    assert "--temperature" in capsys.readouterr().err
    with pytest.raises(Exception, match="temperature"):
        Sampling(temperature=-1.0)


def test_eval_says_what_it_scores_and_how_it_differs_from_the_run_table(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert main(["eval", "--run", str(run_dir)]) == 0
    captured = capsys.readouterr()
    same = json.loads(captured.out)
    assert same["scope"]["clients"] == "run" and same["scope"]["scored_clients"] == 3
    assert same["perplexity"] == pytest.approx(summary["final"]["perplexity"], rel=1e-5)  # reproduces the table
    assert "evaluation clients" in captured.err and "agree" in captured.err
    assert main(["eval", "--run", str(run_dir), "--clients", "all"]) == 0
    captured = capsys.readouterr()
    every = json.loads(captured.out)
    assert every["scope"]["scored_clients"] == 4 and every["run_table"]["clients"] == 3
    assert "differ" in every["note"] and "--clients run" in every["note"]
    assert "held-out perplexity" in captured.err


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing")
def test_merged_export_folds_fedex_residuals(tmp_path):
    """FedEx-LoRA (aggregation.lora=exact) keeps part of the update as base residuals: the merged model has them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlm.models import load_base_model

    data = write_lm_jsonl(tmp_path / "clients.jsonl")
    run = tmp_path / "run"
    argv = ["run", *_set_args(tiny_overrides(data, **{"aggregation.lora": "exact", "output.report": "false"})),
            "--out", str(run)]
    assert main(argv) == 0
    assert main(["export", str(run), "--merged", str(tmp_path / "merged")]) == 0
    enc = {"input_ids": torch.tensor([[10, 20, 30, 40]])}
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(**enc).logits
        _, model, _ = load_run_model(run)
        expected = model(**enc).logits
        base, _ = load_base_model("tiny-llama")
        without = PeftModel.from_pretrained(base, run / "adapter")(**enc).logits  # residuals left out
    assert torch.allclose(merged, expected, atol=1e-5)
    assert not torch.allclose(merged, without, atol=1e-4)
