"""Which prompt tokens drove an answer: token attribution, base vs fine-tuned, as HTML.

The target is the log-likelihood of the model's own greedy answer given the prompt,
``f(e) = sum_t log p(a_t | prompt, a_<t)``, as a function of the prompt's input embeddings
``e`` (P, H); the answer's embeddings are held fixed. Two methods, both summed over the
embedding dimension to one score per prompt token:

* integrated gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep
  Networks"), via ``captum``, from an all-zero embedding baseline. Completeness: the
  scores sum to ``f(e) - f(0)`` up to the integral's discretisation error
  (``ig_delta``);
* gradient x input (Shrikumar et al. 2016, "Not Just a Black Box"): ``grad f(e) . e``.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fedlm.errors import FedlmError


@dataclass(frozen=True)
class Attribution:
    """Per-prompt-token scores of one model's answer.

    Attributes:
        tokens: the prompt's tokens as text.
        answer: the greedy answer that was attributed.
        integrated_gradients: IG score per prompt token (nats).
        grad_x_input: gradient x input score per prompt token (nats).
        target: ``f(e)``, the answer's log-likelihood (nats).
        baseline_target: ``f(0)`` at the zero-embedding baseline (nats).
        ig_delta: ``sum(IG) - (target - baseline_target)`` (completeness error).
    """

    tokens: list[str]
    answer: str
    integrated_gradients: list[float]
    grad_x_input: list[float]
    target: float
    baseline_target: float
    ig_delta: float


def _answer_log_likelihood(model, answer_ids: torch.Tensor):
    """``f(prompt_embeds (B, P, H)) -> (B,)``: log p(answer | prompt) with fixed answer embeds."""
    emb = model.get_input_embeddings()
    answer_emb = emb(answer_ids[None]).detach()  # (1, A, H)
    n = answer_ids.numel()

    def f(prompt_embeds: torch.Tensor) -> torch.Tensor:
        b, p = prompt_embeds.shape[:2]
        x = torch.cat([prompt_embeds, answer_emb.expand(b, -1, -1)], dim=1)  # (B, P+A, H)
        logits = model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long)).logits
        logp = torch.log_softmax(logits[:, p - 1 : p - 1 + n].float(), dim=-1)  # (B, A, V): predicts a_t
        return logp.gather(-1, answer_ids.expand(b, -1)[..., None]).squeeze(-1).sum(-1)

    return f


def attribute(model, tokenizer, prompt: str, *, max_new_tokens: int = 8, steps: int = 32,
              answer_ids: torch.Tensor | None = None) -> Attribution:
    """Attribute ``model``'s greedy answer to ``prompt`` to the prompt's tokens.

    Args:
        model: a causal LM (HF or PEFT), float weights.
        tokenizer: its tokenizer.
        prompt: the prompt text (at least one token).
        max_new_tokens: length of the greedy answer (at least one token is attributed).
        steps: integrated-gradients steps (Gauss-Legendre).
        answer_ids: attribute this answer instead of generating one.

    Raises:
        FedlmError: an empty prompt.
    """
    from captum.attr import IntegratedGradients

    ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() == 0:
        raise FedlmError("the prompt has no tokens; pass a non-empty --prompt")
    model.eval()
    if answer_ids is None:
        with torch.no_grad():
            out = model.generate(input_ids=ids[None], attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        answer_ids = out[0, ids.numel():]
        if answer_ids.numel() == 0:  # stopped at once: attribute the single most likely token
            with torch.no_grad():
                answer_ids = model(input_ids=ids[None]).logits[0, -1].argmax()[None]
    f = _answer_log_likelihood(model, answer_ids)
    x = model.get_input_embeddings()(ids[None]).detach()  # (1, P, H)
    baseline = torch.zeros_like(x)
    ig, delta = IntegratedGradients(f).attribute(x, baselines=baseline, n_steps=steps, return_convergence_delta=True)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg).sum(), xg)
    with torch.no_grad():
        target, base_target = float(f(x)[0]), float(f(baseline)[0])
    return Attribution(
        tokens=[tokenizer.decode([int(i)]) for i in ids],
        answer=tokenizer.decode(answer_ids.tolist(), skip_special_tokens=True),
        integrated_gradients=[float(v) for v in ig[0].sum(-1)],
        grad_x_input=[float(v) for v in (grad * x)[0].sum(-1)],
        target=target,
        baseline_target=base_target,
        ig_delta=float(delta.reshape(-1)[0]),
    )


# ---------------------------------------------------------------------- HTML
_CSS = """
.attr{font-family:system-ui,sans-serif} .attr .pair{display:flex;gap:1.5rem;flex-wrap:wrap}
.attr .panel{flex:1;min-width:320px;border:1px solid #ddd;padding:.6rem;border-radius:4px}
.attr .tok{font-family:ui-monospace,monospace;white-space:pre;padding:1px 0;border-radius:2px}
.attr .row{margin:.3rem 0;line-height:1.9} .attr .muted{color:#777;font-size:.9em}
"""


def _heat(tokens: list[str], scores: list[float]) -> str:
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for t, s in zip(tokens, scores, strict=True):
        a = min(1.0, abs(s) / top)
        rgb = "220,40,40" if s >= 0 else "40,90,220"  # red: raised the answer's likelihood
        spans.append(f"<span class='tok' style='background:rgba({rgb},{a:.2f})' title='{s:.4g}'>"
                     f"{html.escape(t)}</span>")
    return "".join(spans)


def heatmap_fragment(prompt: str, results: dict[str, Attribution]) -> str:
    """An HTML fragment: one panel per model, IG and gradient x input rows."""
    panels = []
    for name, a in results.items():
        panels.append(
            f"<div class='panel'><h3>{html.escape(name)}</h3>"
            f"<p>answer: <b>{html.escape(a.answer)}</b></p>"
            f"<div class='row'><span class='muted'>integrated gradients</span><br>{_heat(a.tokens, a.integrated_gradients)}</div>"
            f"<div class='row'><span class='muted'>gradient × input</span><br>{_heat(a.tokens, a.grad_x_input)}</div>"
            f"<p class='muted'>log p(answer) = {a.target:.3f} nats; at the zero baseline {a.baseline_target:.3f}; "
            f"IG sum {sum(a.integrated_gradients):.3f} (completeness error {a.ig_delta:.2g})</p></div>"
        )
    return (f"<div class='attr'><style>{_CSS}</style><p>prompt: <code>{html.escape(prompt)}</code> · red raised, "
            f"blue lowered the likelihood of the model's answer</p><div class='pair'>{''.join(panels)}</div></div>")


def render_page(prompt: str, results: dict[str, Attribution]) -> str:
    """A self-contained HTML page around ``heatmap_fragment``."""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>token attribution</title></head>"
            f"<body><h1>Token attribution</h1>{heatmap_fragment(prompt, results)}</body></html>")


def asdict_results(results: dict[str, Attribution]) -> dict[str, dict]:
    """Attributions as JSON-friendly dicts (``attribution.json``)."""
    return {k: asdict(v) for k, v in results.items()}


def load_attribution(run_dir: str | Path) -> tuple[str, dict[str, Attribution]] | None:
    """``RUN_DIR/attribution.json`` as (prompt, results), or None when none was asked for."""
    p = Path(run_dir) / "attribution.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text(encoding="utf-8"))
    return d["prompt"], {k: Attribution(**v) for k, v in d["results"].items()}
