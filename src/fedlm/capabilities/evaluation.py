"""Evaluations beyond held-out loss, as capabilities: the bias probe and offline benchmarks.

* ``eval.bias_probe``: "NAME is a OCCUPATION." scored for gendered names before training
  (in the initial evaluation record), after it, and for each client's latest kept update
  (:mod:`fedlm.eval.bias_probe`; ``summary.json``'s ``bias_probe``).
* ``eval_harness``: MMLU-Redux medical, PubMedQA or generated QA scored on the final model
  (``summary.json``'s ``benchmarks``), and before training with ``eval_harness.initial``.
"""

from __future__ import annotations

from typing import Any

from fedlm.engine.capability import Capability, EngineContext, FinishedRun
from fedlm.engine.checkpoint import ServerState
from fedlm.eval.benchmarks import run_benchmarks
from fedlm.eval.bias_probe import bias_summary, probe_state
from fedlm.explain.store import STORE_DIR


class BiasProbe(Capability):
    name = "bias_probe"

    @classmethod
    def build(cls, ctx: EngineContext) -> BiasProbe | None:
        return cls(ctx) if ctx.config.eval.bias_probe else None

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def initial_record(self, state: ServerState) -> dict[str, Any]:
        """Gendered-name disparity before training."""
        return {"bias_probe": probe_state(self.ctx.model, state.global_state)}

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        """Disparity before and after, and of each client's latest kept update."""
        store = run.run_dir / STORE_DIR if self.ctx.config.explain.keep_updates else None
        return {"bias_probe": bias_summary(self.ctx.model, run.initial.get("bias_probe"), run.state.global_state,
                                           store)}


class Benchmarks(Capability):
    name = "benchmarks"

    @classmethod
    def build(cls, ctx: EngineContext) -> Benchmarks | None:
        return cls(ctx) if ctx.config.eval_harness.enabled else None

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def initial_record(self, state: ServerState) -> dict[str, Any]:
        if not self.ctx.config.eval_harness.initial:
            return {}
        model = self.ctx.model
        return {"benchmarks": run_benchmarks(self.ctx.config.eval_harness, model.model, model.tokenizer)}

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        model = self.ctx.model
        return {"benchmarks": run_benchmarks(self.ctx.config.eval_harness, model.model, model.tokenizer),
                "benchmarks_initial": run.initial.get("benchmarks")}


__all__ = ["Benchmarks", "BiasProbe"]
