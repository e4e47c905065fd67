"""A run's model card, filled from its ``summary.json`` and ``config.yaml``.

Whoever receives an adapter needs to know what it learnt from and under which guarantees:
the data and its clients, the rounds, epsilon and delta, whether the server saw single
updates, which defences ran, and the held-out metrics. The card says each, and says "none"
where a protection was off rather than leaving the field out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from fedlm.commands.run_dir import final_model_dir, read_summary
from fedlm.config.loader import load_config
from fedlm.config.schema import ExperimentConfig
from fedlm.models.card import base_section, render_card
from fedlm.models.provenance import (
    RECORD_ATTR,
    RECORD_FILE,
    base_name,
    read_adapter_base,
    write_adapter_base,
)

Kind = Literal["adapter", "merged", "client"]


def run_card(config: ExperimentConfig, summary: dict[str, Any] | None, record: dict[str, Any], *, kind: Kind,
             client: str | None = None) -> str:
    """The card's markdown for the run's adapter, its merged model, or one client's personal adapter."""
    lora = config.lora
    what = {
        "adapter": f"A LoRA adapter (r={lora.r}, alpha={lora.alpha}) of `{base_name(record)}`",
        "merged": f"`{base_name(record)}` with a federated LoRA adapter (r={lora.r}) merged into its weights",
        "client": f"Client `{client}`'s personal model ({config.personal.method}), a LoRA adapter of "
                  f"`{base_name(record)}`",
    }[kind] if lora.enabled else f"`{base_name(record)}` with every weight trained"
    sections = [
        ("Model", f"{what}, trained by federated learning with fedlm (run `{config.name}`): raw text never left "
                  "its clients, only model updates did."),
        ("Base model", base_section(record)),
        ("Training data", _data(config, summary)),
        ("Federation", _federation(config, summary)),
        ("Privacy", _privacy(summary)),
        ("Secure aggregation", _secagg(config, summary)),
        ("Defences", _defences(config, summary)),
        ("Metrics", _metrics(summary, client)),
        ("Use", _use(record, kind, lora.enabled)),
    ]
    library = "peft" if kind in ("adapter", "client") and lora.enabled else "transformers"
    return render_card(title=f"fedlm: {config.name}" + (f", client {client}" if client else ""), record=record,
                       library=library, sections=sections, merged=kind == "merged")


def write_model_card(target: Path, config: ExperimentConfig, summary: dict[str, Any] | None,
                     record: dict[str, Any], *, kind: Kind, client: str | None = None) -> Path:
    """Write ``target/README.md`` (replacing PEFT's template or the card written at save time)."""
    path = Path(target) / "README.md"
    path.write_text(run_card(config, summary, record, kind=kind, client=client), encoding="utf-8")
    return path


def _data(config: ExperimentConfig, summary: dict[str, Any] | None) -> str:
    d = config.data
    where = "the built-in Shakespeare roles (LEAF-style)" if d.source == "shakespeare" else \
        f"`{Path(d.path or '').name}` ({d.source})"
    lines = [f"- source: {where}, format {d.format}, partition {d.partition}"]
    info = (summary or {}).get("data") or {}
    if info:
        lines.append(f"- {info.get('clients')} clients, {info.get('train_examples')} training and "
                     f"{info.get('heldout_examples')} held-out examples (format {info.get('format')})")
    return "\n".join(lines)


def _federation(config: ExperimentConfig, summary: dict[str, Any] | None) -> str:
    fed, s = config.federation, summary or {}
    per_round = fed.clients_per_round if fed.clients_per_round is not None else f"a fraction {fed.fraction}"
    comm = s.get("communication") or {}
    lines = [f"- rounds: {s.get('rounds_completed', '?')} of {fed.rounds} planned"
             + (f" (stopped: {s['stop_reason']})" if s.get("stop_reason") else ""),
             f"- clients per round: {per_round}; local steps: {fed.local_steps or f'{fed.local_epochs} epochs'}; "
             f"client lr {fed.lr}",
             f"- server optimizer: {config.server_opt.name}; engine: {s.get('engine', 'simulation')}"]
    if comm:
        lines.append(f"- bytes up / down: {comm.get('bytes_up', 0):,} / {comm.get('bytes_down', 0):,}")
    if config.personal.method != "none":
        lines.append(f"- personalisation: {config.personal.method}; each client keeps a personal model "
                     "(`fedlm export RUN_DIR --client ID OUT`)")
    return "\n".join(lines)


def _privacy(summary: dict[str, Any] | None) -> str:
    p = (summary or {}).get("privacy")
    if not p or p.get("epsilon") is None:
        return "None: no differential privacy (no epsilon bounds what the model reveals about a client)."
    return (f"- {p.get('level', 'client')}-level differential privacy: epsilon = {p['epsilon']:.3g} at "
            f"delta = {p.get('delta')} ({p.get('accountant')} accountant)\n"
            f"- noise multiplier {p.get('noise_multiplier')}, clip norm {p.get('clip_norm')}, "
            f"sampling {p.get('sampling')}")


def _secagg(config: ExperimentConfig, summary: dict[str, Any] | None) -> str:
    if not config.secure_aggregation.enabled:
        return "Off: the server saw each client's update."
    info = (summary or {}).get("secure_aggregation") or {}
    extra = ", ".join(f"{k} {v}" for k, v in info.items() if isinstance(v, (int, float, str)))[:300]
    return "SecAgg+: the server saw only the sum of each round's updates" + (f" ({extra})." if extra else ".")


def _defences(config: ExperimentConfig, summary: dict[str, Any] | None) -> str:
    fed, rob = config.federation, (summary or {}).get("robustness") or {}
    lines = [f"- aggregator: {config.robust.aggregator}",
             f"- update checks: norm guard {fed.norm_guard or 'off'} x median, max update norm "
             f"{fed.max_update_norm or 'none'}",
             f"- rejected updates: {rob.get('rejected', 0)}"]
    if config.attack.kind != "none":
        lines.append(f"- a simulated {config.attack.kind} attack ran; attack success rate "
                     f"{rob.get('attack_success_rate', 'n/a')}")
    return "\n".join(lines)


def _metrics(summary: dict[str, Any] | None, client: str | None) -> str:
    if not summary:
        return "The run has not finished (no summary.json)."
    init, final = summary.get("initial") or {}, summary.get("final") or {}
    lines = ["Held-out data of the run's evaluation clients, before and after training:", "",
             "| metric | before | after |", "|---|---|---|"]
    for key in ("perplexity", "eval_loss", "token_accuracy"):
        if init.get(key) is not None and final.get(key) is not None:
            lines.append(f"| {key} | {init[key]:.4g} | {final[key]:.4g} |")
    for name, m in ((summary.get("benchmarks") or {}).items() if isinstance(summary.get("benchmarks"), dict) else []):
        if isinstance(m, dict):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float))
            lines.append(f"\n- benchmark {name}: {shown}")
    personal = ((summary.get("personal") or {}).get("clients") or {}).get(client) if client else None
    if personal:
        lines.append(f"\nThis client's held-out perplexity: global model {personal['global'].get('perplexity'):.4g}, "
                     f"personal model {personal['personal'].get('perplexity'):.4g}.")
    return "\n".join(lines)


def _use(record: dict[str, Any], kind: Kind, lora: bool) -> str:
    if kind == "merged" or not lora:
        return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')\n"
                "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')\n```")
    return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f"base = AutoModelForCausalLM.from_pretrained({base_name(record)!r})\n"
            "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')\n```\n\n"
            "For the exact base weights (see above) or a standalone model: `fedlm export RUN_DIR --merged OUT`.")


def run_record(run_dir: Path, config: ExperimentConfig) -> dict:
    """The base-model record of a run: beside its adapter, in its full model's config.json, or a bare one."""
    folder = run_dir / final_model_dir(config)
    record = read_adapter_base(folder)
    if record is None:
        try:
            record = json.loads((folder / "config.json").read_text(encoding="utf-8")).get(RECORD_ATTR)
        except (OSError, ValueError, AttributeError):
            record = None
    return record if isinstance(record, dict) else {"name": config.model.name, "hub_id": None, "source": "unknown"}


def refresh_run_card(run_dir: str | Path) -> None:
    """Fill the run's own ``adapter/README.md`` (written before summary.json existed) from the summary."""
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    folder = run_dir / final_model_dir(config)
    summary = read_summary(run_dir)
    if folder.is_dir() and summary is not None:
        record = run_record(run_dir, config)
        if config.lora.enabled and not (folder / RECORD_FILE).is_file():
            write_adapter_base(folder, record)
        write_model_card(folder, config, summary, record, kind="adapter")


__all__ = ["refresh_run_card", "run_card", "run_record", "write_model_card"]
