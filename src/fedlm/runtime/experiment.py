"""Run one experiment end to end and write its run directory.

Run directory contract (DESIGN.md): ``config.yaml`` (resolved), ``metrics.jsonl``,
``summary.json``, ``adapter/`` (PEFT format; with full training ``model/``, a standard HF
model directory), ``checkpoints/`` and ``report.html``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedlm.attacks import malicious_clients
from fedlm.config.loader import dump_config, load_config
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, build_federated_data
from fedlm.errors import CheckpointError
from fedlm.eval.benchmarks import run_benchmarks
from fedlm.eval.bias_probe import bias_summary, probe_state
from fedlm.models.adapters import AdaptedModel
from fedlm.models.loading import cache_dir, load_base_model
from fedlm.report.metrics_log import MetricsLog, write_json
from fedlm.runtime.adversary import (
    honest_eval,
    measure_attack,
    measure_clean_target,
    poison_hook,
    triggered_prompts,
)
from fedlm.runtime.audit_trail import round_audit
from fedlm.runtime.checkpoint import ServerState, load_latest, save_checkpoint
from fedlm.runtime.contribution_run import contribution_summary
from fedlm.runtime.privacy_audit import audit_model, canary_hook, chain_hooks, participants_of
from fedlm.runtime.secagg_round import summarize as secagg_summary
from fedlm.runtime.simulation import Simulation


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def final_model_dir(config: ExperimentConfig) -> str:
    """``adapter`` for LoRA runs, ``model`` for full training (an HF model directory)."""
    return "adapter" if config.lora.enabled else "model"


def config_digest(config: ExperimentConfig) -> str:
    """Identity of an experiment for resume: everything but the round count and output."""
    data = config.model_dump(mode="json")
    data.pop("output", None)
    data["federation"].pop("rounds", None)
    data["model"].pop("device", None)  # a run may resume on another device: state is kept on the CPU
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare(config: ExperimentConfig, *, console: Console | None = None) -> tuple[AdaptedModel, FederatedData]:
    """Load the base model (once) and build the federated data."""
    console = console or Console(stderr=True)
    with console.status(f"loading model {config.model.name}"):
        base, tok = load_base_model(
            config.model.name, dtype=config.model.dtype, seed=config.model.seed, init=config.model.init,
            architecture=config.model.architecture,
        )
        model = AdaptedModel(base, tok, config.lora, seed=config.model.seed,
                             freeze_a=config.lora.enabled and config.aggregation.lora == "ffa",
                             device=config.model.device)
    with console.status(f"building data ({config.data.source})"):
        hook = chain_hooks(poison_hook(config), canary_hook(config))  # backdoor rows, audit canaries
        data = build_federated_data(config.data, tok, cache_dir=cache_dir(), rows_hook=hook)
    return model, data


def resume_state(sim: Simulation, log: MetricsLog, ckpt_dir: Path, *, digest: str) -> tuple[ServerState, dict]:
    """The last checkpoint and the initial evaluation record, with the log and the engine set back to it."""
    state = load_latest(ckpt_dir, config_digest=digest)
    log.truncate_after(state.round)
    initial = next((r for r in log.read() if r.get("type") == "eval" and r.get("round") == 0), None)
    if initial is None:
        raise CheckpointError(f"{log.path} lacks the initial evaluation; start the run again without resume")
    if sim.dp is not None:
        sim.dp.restore(state)  # continue the privacy ledger
    sim.hetero.sync_base(state.server_states)  # FedEx-LoRA: the base weights as of the checkpoint
    return state, initial


def run_experiment(
    config: ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Run (or resume) an experiment; returns its run directory and summary."""
    console = console or Console(stderr=True)
    run_dir = Path(out_dir or config.output.dir or f"runs/{config.name}-{datetime.now():%Y%m%d-%H%M%S}")
    log = MetricsLog(run_dir / "metrics.jsonl")
    ckpt_dir = run_dir / "checkpoints"
    digest = config_digest(config)
    t_start = time.perf_counter()

    model, data = prepare(config, console=console)
    sim = Simulation(config, model, data)
    if sim.explain is not None:  # explain.keep_updates: round updates under run_dir/explain
        sim.explain.keep_in(run_dir)
    attack_prompts = triggered_prompts(config, data) if config.attack.poisons_data else []

    if resume:
        state, initial = resume_state(sim, log, ckpt_dir, digest=digest)
        console.print(f"resuming {run_dir} after round {state.round}")
    else:
        if (run_dir / "metrics.jsonl").exists():
            raise CheckpointError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        state = sim.init_state()
        initial = {"type": "eval", "round": 0, **sim.evaluate(state.global_state)}
        asr = measure_attack(config, model.model, model.tokenizer, attack_prompts)
        if asr is not None:
            initial["attack_success_rate"] = asr
        if config.eval.bias_probe:  # gendered-name disparity before training
            initial["bias_probe"] = probe_state(model, state.global_state)
        if config.eval_harness.enabled and config.eval_harness.initial:  # benchmarks before training
            initial["benchmarks"] = run_benchmarks(config.eval_harness, model.model, model.tokenizer)
        log.append(initial)
    (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")

    fed, out = config.federation, config.output
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )
    with progress:
        rounds_task = progress.add_task("rounds", total=fed.rounds, completed=state.round)
        clients_task = progress.add_task("clients", total=sim.cohort_size)
        while state.round < fed.rounds:
            if sim.dp is not None and sim.dp.check_budget(state) is not None:
                progress.console.print(f"stopping: {sim.dp.stop_reason}")
                break
            progress.reset(clients_task, total=sim.cohort_size, description=f"round {state.round + 1} clients")
            state, record = sim.run_round(state, on_client=lambda _cid: progress.advance(clients_task))
            if sim.dp is not None:  # one accountant step; epsilon into the round record
                state, record = sim.dp.after_round(state, record)
            record["audit"] = round_audit(record)  # the round audit trail (report table)
            log.append(record)
            r = state.round
            if r % config.eval.every == 0 or r == fed.rounds:
                ids = record["cohort"] if config.eval.clients == "sampled" else None
                ev = sim.evaluate(state.global_state, ids)
                log.append({"type": "eval", "round": r, **ev})
                progress.console.print(
                    f"round {r}: train loss {record['train_loss'] or float('nan'):.4f}, held-out perplexity {ev['perplexity']:.2f}"
                )
            if r % out.checkpoint_every == 0 or r == fed.rounds:
                save_checkpoint(ckpt_dir, state, config_digest=digest, keep=out.keep_checkpoints)
            progress.advance(rounds_task)

    records = log.read()
    final_eval = [x for x in records if x.get("type") == "eval" and x.get("round") == state.round]
    final = final_eval[-1] if final_eval else {"type": "eval", "round": state.round, **sim.evaluate(state.global_state)}
    if config.eval.clients == "sampled":  # the summary compares like with like: all eval clients
        final = {"type": "eval", "round": state.round, **sim.evaluate(state.global_state)}
    model.set_state(state.global_state)
    model.save(run_dir / final_model_dir(config))
    sim.hetero.save(run_dir / final_model_dir(config), state.server_states)  # FedEx-LoRA base residuals
    final_asr = measure_attack(config, model.model, model.tokenizer, attack_prompts)
    summary = build_summary(config, records, initial, final, state, wall=time.perf_counter() - t_start, model=model, data=data)
    malicious = sorted(malicious_clients(config.attack, data.ids()))
    summary["robustness"].update(
        aggregator=config.robust.aggregator,
        attack=config.attack.kind,
        malicious_clients=malicious,
        attack_success_rate=final_asr,
        attack_success_rate_initial=initial.get("attack_success_rate"),
        clean=honest_eval(final, malicious),  # held-out metrics of honest clients only
        target_on_clean_prompts=measure_clean_target(config, model.model, model.tokenizer, data),
    )
    if sim.dp is not None:
        summary["privacy"] = sim.dp.summary(state)
    summary["contribution"] = contribution_summary(records, negative_tol=config.explain.negative_tol)
    if config.eval.bias_probe:  # disparity before / after, and of each client's latest update
        summary["bias_probe"] = bias_summary(model, initial.get("bias_probe"), state.global_state,
                                             sim.explain.store_dir if sim.explain else None)
    if config.audit.enabled:  # exposure and MIA AUC next to epsilon
        summary["audit"] = audit_model(config, model.model, model.tokenizer, data,
                                       participants=participants_of(log.path))
    summary.update(sim.personal.summary(sim, state.global_state, state.client_states, final))  # fairness, personal
    if config.eval_harness.enabled:  # offline benchmarks (MMLU-Redux medical, PubMedQA) of the final model
        model.set_state(state.global_state)
        summary["benchmarks"] = run_benchmarks(config.eval_harness, model.model, model.tokenizer)
        summary["benchmarks_initial"] = initial.get("benchmarks")
    write_json(run_dir / "summary.json", summary)
    if config.report.trackers:  # TensorBoard / MLflow (optional extras)
        from fedlm.report.trackers import mirror

        mirror(config.report.trackers, run_dir, log.read(), run_name=config.name)
    if out.report:
        from fedlm.report.html import write_report

        write_report(run_dir)
    return RunResult(run_dir, summary)


def build_summary(config, records, initial, final, state, *, wall: float, model: AdaptedModel, data: FederatedData) -> dict[str, Any]:
    """summary.json: the keys in DESIGN.md's contract, plus a few extras."""
    rounds = [r for r in records if r.get("type") == "round"]
    rejected = [dict(x, round=r["round"]) for r in rounds for x in r.get("rejected", [])]
    by_reason: dict[str, int] = {}
    for x in rejected:
        by_reason[x["reason"]] = by_reason.get(x["reason"], 0) + 1

    def headline(ev: dict[str, Any]) -> dict[str, Any]:
        return {k: ev.get(k) for k in ("eval_loss", "perplexity", "token_accuracy", "tokens")}

    flagged: dict[str, int] = {}
    for r in rounds:
        agg = (r.get("server") or {}).get(_aggregate_stage_name(config), {})
        for cid in agg.get("flagged", []) if isinstance(agg, dict) else []:
            flagged[cid] = flagged.get(cid, 0) + 1
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
        "secure_aggregation": secagg_summary(rounds),  # None unless secure aggregation ran
        "robustness": {"rejected": len(rejected), "by_reason": by_reason, "rejected_updates": rejected,
                       "flagged": flagged},
        "wall_seconds": wall,
        "model": config.model.name,
        "trainable_parameters": model.num_trainable(),
        "data": data.summary(),
        "torch_threads": torch.get_num_threads(),
    }


def _aggregate_stage_name(config: ExperimentConfig) -> str:
    from fedlm.aggregation.robust_stages import build_robust_stage

    stage = build_robust_stage(config.robust)
    return stage.name if stage is not None else "mean"


def resume_experiment(run_dir: str | Path, *, overrides: list[str] | None = None, console: Console | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its own config."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", overrides)
    return run_experiment(config, out_dir=run_dir, resume=True, console=console)
