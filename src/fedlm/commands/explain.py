"""``fedlm explain``: explanations of a finished run, computed offline.

``explain_run``: client contributions recomputed from the run's kept round updates
(``explain.keep_updates``) with any method (gtg, loo, exact). ``explain_tokens``: which
prompt tokens drove the base and the fine-tuned model's answers (:mod:`fedlm.explain.tokens`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedlm.capabilities.contribution import Contribution, contribution_record, contribution_summary
from fedlm.commands.evaluate import load_run_model
from fedlm.commands.experiment import prepare
from fedlm.config.loader import load_config
from fedlm.errors import ConfigError, FedlmError
from fedlm.explain.store import STORE_DIR, load_round
from fedlm.explain.tokens import asdict_results, attribute, render_page
from fedlm.models.loading import load_base_model
from fedlm.report.html import write_report


@torch.no_grad()
def explain_run(run_dir: str | Path, *, method: str | None = None, write: bool = True) -> dict[str, Any]:
    """Contributions of a finished run, recomputed from its stored round updates.

    Args:
        run_dir: a run made with ``explain.keep_updates=true``.
        method: "gtg", "loo" or "exact" (default: the run's ``explain.contribution``, or gtg).
        write: save the result as ``run_dir/contribution_<method>.json`` (and, when the run
            measured none itself, as ``summary.json``'s ``contribution``, re-rendering the report).

    Raises:
        FedlmError: the run kept no round updates.
    """
    run_dir = Path(run_dir)
    files = sorted((run_dir / STORE_DIR).glob("round_*.safetensors"))
    if not files:
        raise FedlmError(
            f"{run_dir / STORE_DIR} holds no round updates; rerun with --set explain.keep_updates=true"
        )
    config = load_config(run_dir / "config.yaml")
    method = method or (config.explain.contribution if config.explain.contribution != "off" else "gtg")
    if method not in ("gtg", "loo", "exact"):
        raise ConfigError(f"unknown contribution method {method!r}; choose 'gtg', 'loo' or 'exact'")
    model, data = prepare(config)
    run = Contribution(config, model, data)
    rounds = []
    for path in files:
        r, global_state, tensors, weights = load_round(path)
        rounds.append({"round": r, "contribution": contribution_record(run, global_state, tensors, weights, method=method)})
    out = contribution_summary(rounds, negative_tol=config.explain.negative_tol) or {}
    if write:
        (run_dir / f"contribution_{method}.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
        _into_summary(run_dir, out)
    return out


def _into_summary(run_dir: Path, result: dict[str, Any]) -> None:
    """A run without in-run contributions shows the recomputed ones in its summary and report."""
    path = run_dir / "summary.json"
    if not path.exists():
        return
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("contribution"):
        return  # keep what the run measured; the recomputation is in contribution_<method>.json
    summary["contribution"] = result
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if (run_dir / "report.html").exists():
        write_report(run_dir)


def explain_tokens(run_dir: str | Path, prompt: str, *, out: str | Path | None = None,
                   max_new_tokens: int = 8, steps: int = 32) -> Path:
    """Attribute the base model's and the run's fine-tuned model's answers; write HTML.

    Writes ``out`` (default ``RUN_DIR/attribution.html``) and ``RUN_DIR/attribution.json``,
    which ``report.html`` shows as its attribution section. Returns the HTML path.
    """
    run_dir = Path(run_dir)
    config, tuned, tok = load_run_model(run_dir)
    m = config.model
    base, _ = load_base_model(m.name, dtype="float32", seed=m.seed, init=m.init, architecture=m.architecture)
    results = {
        "base model": attribute(base.float(), tok, prompt, max_new_tokens=max_new_tokens, steps=steps),
        "fine-tuned": attribute(tuned.float(), tok, prompt, max_new_tokens=max_new_tokens, steps=steps),
    }
    path = Path(out) if out else run_dir / "attribution.html"
    path.write_text(render_page(prompt, results), encoding="utf-8")
    payload = {"prompt": prompt, "results": asdict_results(results)}
    (run_dir / "attribution.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    summary_path = run_dir / "summary.json"
    if summary_path.exists():  # the report's attribution section reads it from the summary
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["attribution"] = payload
        summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        if (run_dir / "report.html").exists():
            write_report(run_dir)
    return path


__all__ = ["explain_run", "explain_tokens"]
