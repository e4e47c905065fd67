"""Run one experiment end to end and write its run directory.

Run directory contract (DESIGN.md): ``config.yaml`` (resolved), ``metrics.jsonl``,
``summary.json``, ``adapter/`` (PEFT format; with full training ``model/``, a standard HF
model directory), ``checkpoints/`` and ``report.html``.

:func:`run_in_dir` is the part every engine shares: the initial evaluation, the one round
loop (:func:`fedlm.engine.loop.run_rounds`), the final evaluation, the adapter, the
summary with every capability's keys, and the report. ``fedlm run`` gives it the
in-process simulator; a deployment's ServerApp gives it the Flower driver.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fedlm.capabilities import build_engine, rows_hook
from fedlm.commands.model_card import refresh_run_card
from fedlm.commands.progress import RoundProgress
from fedlm.commands.quiet import summarised_warnings
from fedlm.commands.run_dir import config_digest, default_run_dir, final_model_dir
from fedlm.config.loader import dump_config, load_config, require_resolved
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, build_federated_data
from fedlm.engine.capability import FinishedRun
from fedlm.engine.checkpoint import ServerState
from fedlm.engine.loop import RoundDriver, resume_state, run_rounds
from fedlm.errors import CheckpointError
from fedlm.eval.fairness import client_fairness
from fedlm.models.adapters import AdaptedModel
from fedlm.models.loading import cache_dir, load_base_model
from fedlm.report.metrics_log import MetricsLog, write_json


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def prepare(config: ExperimentConfig, *, console: Console | None = None) -> tuple[AdaptedModel, FederatedData]:
    """Load the base model (once) and build the federated data (with the capabilities' rows hooks)."""
    console = console or Console(stderr=True)
    require_resolved(config)  # e.g. an unset FEDLM_DATA: one line before anything loads
    with console.status(f"loading model {config.model.name}"):
        base, tok = load_base_model(
            config.model.name, dtype=config.model.dtype, seed=config.model.seed, init=config.model.init,
            architecture=config.model.architecture,
        )
        model = AdaptedModel(base, tok, config.lora, seed=config.model.seed,
                             freeze_a=config.lora.enabled and config.aggregation.lora == "ffa",
                             device=config.model.device)
    with console.status(f"building data ({config.data.source})"):
        data = build_federated_data(config.data, tok, cache_dir=cache_dir(), rows_hook=rows_hook(config))
    return model, data


def run_experiment(
    config: ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Run (or resume) an experiment in process; returns its run directory and summary."""
    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    run_dir = default_run_dir(config, out_dir)
    check_run_dir(run_dir, resume=resume)  # before the model loads: a wrong --out costs nothing
    model, data = prepare(config, console=console)
    sim = build_engine(config, model, data)
    return run_in_dir(sim, config, model, run_dir=run_dir, resume=resume,
                      console=console, started=t_start, engine="simulation")


def run_in_dir(driver: RoundDriver, config: ExperimentConfig, model: AdaptedModel, *, run_dir: Path, resume: bool,
               console: Console, started: float, engine: str) -> RunResult:
    """Run ``driver``'s rounds from the start or the last checkpoint, writing ``run_dir``.

    Args:
        driver: what runs each round and evaluation (``Simulation``, or a deployment's server).
        model: the one model the driver's global state lives in (saved as the final adapter).
        engine: the driver's name, recorded in ``summary.json``.

    Raises:
        CheckpointError: another process writes ``run_dir``; a fresh start in a folder that
            holds a run; a resume without an intact checkpoint of this config and data.
    """
    check_run_dir(run_dir, resume=resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir), summarised_warnings(console):
        return _run(driver, config, model, run_dir=run_dir, resume=resume, console=console, started=started,
                    engine=engine)


def _run(driver: RoundDriver, config: ExperimentConfig, model: AdaptedModel, *, run_dir: Path, resume: bool,
         console: Console, started: float, engine: str) -> RunResult:
    log = MetricsLog(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    digest, data_digest = config_digest(config), driver.data.digest()
    for cap in driver.capabilities:
        cap.open_run(run_dir)
    if resume:
        state, initial, ckpt = resume_state(driver, log, ckpt_dir, digest=digest, data_digest=data_digest)
        for why in ckpt.damaged:
            console.print(f"[yellow]skipped a damaged checkpoint[/] {why}")
        console.print(f"resuming {run_dir} after round {state.round} ({ckpt.path.name})")
    else:
        state = driver.init_state()
        with console.status("evaluating the initial model on the clients' held-out data"):
            initial = {"type": "eval", "round": 0, **driver.evaluate_round(state)}
            for cap in driver.capabilities:  # e.g. an attack's success rate before training
                model.set_state(state.global_state)
                initial.update(cap.initial_record(state))
        log.append(initial)
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")

    with RoundProgress(console, total=config.federation.rounds, done=state.round) as progress:
        end = run_rounds(driver, state, config=config, log=log, checkpoints=ckpt_dir, digest=digest,
                         data_digest=data_digest, observer=progress)
    state = end.state

    records = log.read()
    final_eval = [x for x in records if x.get("type") == "eval" and x.get("round") == state.round]
    final = final_eval[-1] if final_eval else {"type": "eval", "round": state.round, **driver.evaluate_round(state)}
    if config.eval.clients == "sampled":  # the summary compares like with like: all eval clients
        final = {"type": "eval", "round": state.round, **driver.evaluate_round(state)}
    model.set_state(state.global_state)
    model.save(run_dir / final_model_dir(config))
    for cap in driver.capabilities:  # files beside the adapter (e.g. FedEx-LoRA's base residuals)
        cap.save(run_dir / final_model_dir(config), state)
    summary = build_summary(config, records, initial, final, state, wall=time.perf_counter() - started, model=model,
                            data=driver.data)
    summary["engine"] = engine
    summary["stop_reason"] = end.stop_reason
    run = FinishedRun(state=state, records=records, initial=initial, final=final, driver=driver, run_dir=run_dir)
    for cap in driver.capabilities:
        model.set_state(state.global_state)  # each capability sees the final global model loaded
        with console.status(f"summarising: {cap.name}"):
            merge_summary(summary, cap.summary(run))
    model.set_state(state.global_state)
    write_json(run_dir / "summary.json", summary)
    refresh_run_card(run_dir)  # the adapter's model card, filled from the summary
    if config.report.trackers:  # TensorBoard / MLflow (optional extras)
        from fedlm.report.trackers import mirror

        mirror(config.report.trackers, run_dir, log.read(), run_name=config.name)
    if config.output.report:
        from fedlm.report.html import write_report

        write_report(run_dir)
    return RunResult(run_dir, summary)


def check_run_dir(run_dir: Path, *, resume: bool) -> None:
    """Refuse a run directory that cannot take this run, before anything is loaded."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--out {run_dir} is a file; give a folder for the run directory")
    if resume:
        if not run_dir.is_dir():
            raise CheckpointError(f"there is no run at {run_dir} to resume; check the path, or start a new run")
        return
    if (run_dir / "metrics.jsonl").exists() or any((run_dir / "checkpoints").glob("round_*")):
        raise CheckpointError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the run: a second fedlm process writing the same run is refused."""
    path = run_dir / ".lock"
    fh = path.open("a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise CheckpointError(f"{run_dir} is being written by {holder}; wait for it, or choose another --out") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"fedlm pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def merge_summary(summary: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add a capability's keys: a dict merges into the dict already there, anything else replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(summary.get(key), dict):
            summary[key] = {**summary[key], **value}
        else:
            summary[key] = value


def build_summary(config, records, initial, final, state: ServerState, *, wall: float, model: AdaptedModel,
                  data: FederatedData) -> dict[str, Any]:
    """summary.json: the keys in DESIGN.md's contract, plus a few extras; capabilities add theirs."""
    rounds = [r for r in records if r.get("type") == "round"]
    rejected = [dict(x, round=r["round"]) for r in rounds for x in r.get("rejected", [])]
    by_reason: dict[str, int] = {}
    for x in rejected:
        by_reason[x["reason"]] = by_reason.get(x["reason"], 0) + 1

    def headline(ev: dict[str, Any]) -> dict[str, Any]:
        return {k: ev.get(k) for k in ("eval_loss", "perplexity", "token_accuracy", "tokens")}

    return {
        "name": config.name,
        "rounds_completed": state.round,
        "initial": headline(initial),
        "final": headline(final),
        "clients": {cid: {"initial": initial["clients"].get(cid), "final": m} for cid, m in final["clients"].items()},
        "communication": {
            "bytes_up": state.totals.get("bytes_up", 0),
            "bytes_down": state.totals.get("bytes_down", 0),
            "per_round": [{"round": r["round"], "bytes_up": r["bytes_up"], "bytes_down": r["bytes_down"]} for r in rounds],
        },
        "privacy": None,
        "secure_aggregation": None,
        "robustness": {"rejected": len(rejected), "by_reason": by_reason, "rejected_updates": rejected,
                       "flagged": {}},
        "contribution": None,
        "fairness": client_fairness(final.get("clients", {})),
        "personal": None,
        "wall_seconds": wall,
        "model": config.model.name,
        "trainable_parameters": model.num_trainable(),
        "data": {**data.summary(), "source": config.data.source, "path": config.data.path},
        "torch_threads": torch.get_num_threads(),
    }


def resume_experiment(run_dir: str | Path, *, overrides: list[str] | None = None, console: Console | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own config."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    return run_experiment(config, out_dir=run_dir, resume=True, console=console)


__all__ = ["RunResult", "build_summary", "check_run_dir", "config_digest", "final_model_dir", "prepare",
           "resume_experiment", "run_experiment", "run_in_dir", "run_lock"]
