"""Token attribution: IG completeness, and `fedlm explain tokens` on a finished run."""

from __future__ import annotations

import json

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.cli.main import main
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.explain.tokens import attribute, heatmap_fragment, load_attribution
from fedlm.models.loading import load_base_model


@pytest.fixture(scope="module")
def tiny():
    return load_base_model("tiny-llama", dtype="float32", seed=0, init="pretrained", architecture={})


def test_integrated_gradients_completeness(tiny) -> None:
    model, tok = tiny
    a = attribute(model, tok, "the quick brown", max_new_tokens=4, steps=256)
    assert len(a.tokens) == len(a.integrated_gradients) == len(a.grad_x_input) == 15  # byte tokens
    gain = a.target - a.baseline_target
    # sum of IG scores = f(input) - f(baseline), up to the integral's discretisation error
    assert sum(a.integrated_gradients) == pytest.approx(gain, rel=0.02, abs=1e-3)
    assert a.ig_delta == pytest.approx(sum(a.integrated_gradients) - gain, abs=1e-4)
    # the target is the answer's log-likelihood: a sum of log-probabilities, so <= 0
    assert a.target < 0 and a.baseline_target < 0


def test_grad_x_input_by_hand(tiny) -> None:
    """On a fixed answer, gradient x input is grad f(e) . e per token, summed over H."""
    model, tok = tiny
    answer = torch.tensor([70, 71], dtype=torch.long)
    a = attribute(model, tok, "ab", answer_ids=answer, steps=8)
    ids = torch.tensor(tok("ab", add_special_tokens=False)["input_ids"])
    e = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=torch.cat([e, model.get_input_embeddings()(answer[None]).detach()], 1)).logits
    logp = torch.log_softmax(logits[0, 1:3], -1)  # positions predicting the 2 answer tokens
    target = logp[0, 70] + logp[1, 71]
    (g,) = torch.autograd.grad(target, e)
    assert a.target == pytest.approx(float(target.detach()), abs=1e-5)
    assert a.grad_x_input == pytest.approx((g * e)[0].sum(-1).tolist(), abs=1e-5)


def test_heatmap_escapes_tokens(tiny) -> None:
    model, tok = tiny
    a = attribute(model, tok, "<b>", max_new_tokens=1, steps=4)
    out = heatmap_fragment("<b>", {"m": a})
    assert ">&lt;</span>" in out and "><</span>" not in out  # byte tokens '<', 'b', '>' escaped
    assert out.count("class='tok'") == 2 * len(a.tokens)


def test_cli_explain_tokens_side_by_side(tmp_path, capsys) -> None:
    path = write_lm_jsonl(tmp_path / "d.jsonl", clients=3)
    cfg = load_config(None, tiny_overrides(path, **{"federation.rounds": 1, "output.report": "false"}))
    run_dir = run_experiment(cfg, out_dir=tmp_path / "run").run_dir
    out = tmp_path / "attr.html"
    assert main(["explain", "tokens", "--run", str(run_dir), "--prompt", "the quick", "--out", str(out),
                 "--steps", "8", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert "base model" in page and "fine-tuned" in page and "integrated gradients" in page
    prompt, results = load_attribution(run_dir)
    assert prompt == "the quick" and set(results) == {"base model", "fine-tuned"}
    assert json.loads((run_dir / "attribution.json").read_text())["prompt"] == "the quick"
    # LoRA moved the model: the two models score the prompt differently
    assert results["base model"].grad_x_input != results["fine-tuned"].grad_x_input
