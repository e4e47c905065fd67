"""``fedlm export``: a run's model as files other tools load without fedlm.

* ``--merged OUT``: a standalone Hugging Face model folder (weights, tokenizer, card): the
  base with the final adapter merged in and FedEx-LoRA's base residuals folded in, so
  ``AutoModelForCausalLM.from_pretrained(OUT)`` is the run's model, with no fedlm cache
  and no network.
* ``--client ID OUT``: one client's personal model as a PEFT adapter. Personal models
  live in the run's last checkpoint (each client's kept state); the method that made them
  (``personal.method``) rebuilds the client's model from it, exactly as the run's
  end-of-run scoring did.

Both write a model card from ``summary.json`` and refuse a non-empty target folder.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fedlm.commands.evaluate import load_run_model
from fedlm.commands.experiment import config_digest, prepare
from fedlm.commands.model_card import refresh_run_card, run_record, write_model_card
from fedlm.commands.run_dir import check_export_dir, read_summary, require_run_dir
from fedlm.config.loader import load_config
from fedlm.config.schema import ExperimentConfig
from fedlm.errors import ConfigError, ModelError
from fedlm.models.adapters import AdaptedModel
from fedlm.models.provenance import write_adapter_base


def export_merged(run_dir: str | Path, out: str | Path, *, console: Console | None = None) -> Path:
    """Write the run's final model, adapter merged, as a Hugging Face model folder ``out``.

    Raises:
        FedlmError: ``run_dir`` is not a finished run; ``out`` is a file or not empty.
    """
    console = console or Console(stderr=True)
    run_dir = require_run_dir(run_dir)
    out = check_export_dir(out, flag="--merged")
    with console.status(f"loading {run_dir}'s model"):
        config, model, tok = load_run_model(run_dir)
    record = run_record(run_dir, config)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the status line below says what is being written
    with console.status(f"writing {out}"):
        merged = model.merge_and_unload() if config.lora.enabled else model
        out.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(out)
        tok.save_pretrained(out)
        write_adapter_base(out, record)  # base_model.json (there is no adapter_config.json here)
        summary = read_summary(run_dir)
        write_model_card(out, config, summary, record, kind="merged")
        refresh_run_card(run_dir)
    return out


def export_client(run_dir: str | Path, client: str, out: str | Path, *, console: Console | None = None) -> Path:
    """Write ``client``'s personal model as a PEFT adapter folder ``out`` (with the FedEx residuals if any).

    Raises:
        ConfigError: the run trained no personal models, or names no such client.
        ModelError: the client has no personal model (it never trained), or the run is not LoRA.
    """
    run_dir = require_run_dir(run_dir)
    out = check_export_dir(out, flag="OUT")
    config, adapted, state, capabilities = _personal(run_dir, client, device="cpu", console=console)
    adapted.save(out)
    for cap in capabilities:  # files the adapter needs beside it (FedEx-LoRA's base residuals)
        cap.save(out, state)
    record = run_record(run_dir, config)
    write_adapter_base(out, record)
    write_model_card(out, config, read_summary(run_dir), record, kind="client", client=client)
    return out


def personal_model(run_dir: str | Path, client: str, *, device: str = "cpu",
                   console: Console | None = None) -> tuple[ExperimentConfig, AdaptedModel]:
    """The run's model holding ``client``'s personal tensors, on ``device``."""
    config, adapted, _, _ = _personal(require_run_dir(run_dir), client, device=device, console=console)
    return config, adapted


def _personal(run_dir: Path, client: str, *, device: str, console: Console | None):
    from fedlm.capabilities import build_engine
    from fedlm.capabilities.personal import Personalization
    from fedlm.engine.checkpoint import load_latest

    config = load_config(run_dir / "config.yaml")
    if config.personal.method == "none":
        raise ConfigError(f"{run_dir} trained no personal models (personal.method is none); "
                          "fedlm export --merged exports the global model")
    if not config.lora.enabled:
        raise ModelError(f"{run_dir} trained every weight (lora.enabled is false); a personal adapter needs LoRA")
    if not (run_dir / "checkpoints").is_dir():
        raise ModelError(f"{run_dir} has no checkpoints/, where personal models are kept; the run did not finish "
                         "a round")
    config = config.model_copy(update={"model": config.model.model_copy(update={"device": device})})
    adapted, data = prepare(config, console=console or Console(stderr=True))
    if client not in data.clients:
        ids = sorted(data.clients)
        raise ConfigError(f"the run has no client {client!r}; its clients include {ids[:8]}"
                          + (f" and {len(ids) - 8} more" if len(ids) > 8 else ""))
    sim = build_engine(config, adapted, data)
    loaded = load_latest(run_dir / "checkpoints", config_digest=config_digest(config))
    state = getattr(loaded, "state", loaded)  # a Checkpoint, or the state itself
    for cap in sim.capabilities:
        cap.adopt(state)  # e.g. FedEx-LoRA folds its residual into the base weights
    personal = sim.capability(Personalization)
    own = personal.personal_state(client, state.global_state, state.client_states) if personal else None
    if own is None:
        kept = sorted(c for c, s in state.client_states.items() if s)
        raise ModelError(f"client {client!r} has no personal model: it never trained in this run; clients with "
                         f"one include {kept[:8]}")
    adapted.set_state(own)
    return config, adapted, state, sim.capabilities


__all__ = ["export_client", "export_merged", "personal_model"]
