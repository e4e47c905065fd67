"""Federated pre-training (DiLoCo style) end to end on a tiny random Llama.

The lifecycle the pre-training example promises: random init -> H inner AdamW steps per
client (state kept on the client) -> outer Nesterov step -> a standard HF model directory
that ``AutoModelForCausalLM.from_pretrained`` reloads -> LoRA fine-tuning of that directory.
"""

import json

import pytest
import torch
from tests_support import tiny_overrides
from transformers import AutoModelForCausalLM

from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.errors import ConfigError

PRETRAIN = {
    "model.init": "random",
    "model.architecture": "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2}",
    "lora.enabled": "false",
    "federation.keep_optimizer_state": "true",
    "federation.local_steps": 3,
    "server_opt.name": "nesterov",
    "server_opt.lr": 0.7,
    "server_opt.momentum": 0.9,
}


@pytest.fixture
def pretrained(lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data, **PRETRAIN))
    return run_experiment(cfg, out_dir=tmp_path / "pre")


def test_pretraining_writes_a_reloadable_hf_model_that_learned(pretrained):
    run_dir, summary = pretrained.run_dir, pretrained.summary
    assert not (run_dir / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]
    # every weight travels: the upload of one client is the full model in fp32
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rounds if r.get("type") == "round")
    per_client_up = first["bytes_up"] / len(first["cohort"])
    assert per_client_up >= 4 * n_params * 0.99  # untied weights only; tied ones are sent once


def test_optimizer_state_persists_on_the_client_and_changes_the_run(lm_data, tmp_path):
    kept = run_experiment(load_config(None, tiny_overrides(lm_data, **PRETRAIN)), out_dir=tmp_path / "kept")
    fresh_cfg = load_config(None, tiny_overrides(lm_data, **{**PRETRAIN, "federation.keep_optimizer_state": "false"}))
    fresh = run_experiment(fresh_cfg, out_dir=tmp_path / "fresh")
    a = AutoModelForCausalLM.from_pretrained(kept.run_dir / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(fresh.run_dir / "model").state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_the_pretrained_directory_fine_tunes_with_lora(pretrained, lm_data, tmp_path):
    cfg = load_config(None, tiny_overrides(lm_data, **{"model.name": str(pretrained.run_dir / "model")}))
    tuned = run_experiment(cfg, out_dir=tmp_path / "tuned")
    assert (tuned.run_dir / "adapter" / "adapter_config.json").is_file()
    assert tuned.summary["final"]["eval_loss"] < tuned.summary["initial"]["eval_loss"]


def test_architecture_overrides_need_random_init(lm_data):
    with pytest.raises(ConfigError, match=r"model\.init=random"):
        load_config(None, [*tiny_overrides(lm_data), "model.name=smollm2-135m",
                           "model.architecture={hidden_size: 32}"])
