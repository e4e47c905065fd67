"""Library functions behind ``fedlm data inspect``, ``fedlm generate`` and ``fedlm eval``."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors import SafetensorError, safe_open

from fedlm.capabilities.hetero import fold_saved_residuals
from fedlm.commands.run_dir import final_model_dir, read_summary, require_run_dir
from fedlm.config.loader import load_config
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, build_federated_data
from fedlm.errors import ModelError
from fedlm.eval.metrics import LMScore, score_lm
from fedlm.models.device import resolve_device
from fedlm.models.loading import cache_dir, load_base_model, load_tokenizer


def inspect_data(config: ExperimentConfig) -> dict[str, Any]:
    """Clients, their sizes, label histograms and non-IID measures (no model weights)."""
    tok = load_tokenizer(config.model.name)
    data = build_federated_data(config.data, tok, cache_dir=cache_dir())
    rows = [
        {
            "client": cid,
            "train": len(c.train),
            "heldout": len(c.heldout),
            "chars": c.chars,
            "labels": ", ".join(f"{k}:{v}" for k, v in c.labels.most_common(4)) or "-",
            "label_counts": dict(c.labels),
        }
        for cid, c in data.clients.items()
    ]
    return {"summary": data.summary(), "clients": rows, "token_js": token_divergence(data)}


def token_divergence(data: FederatedData) -> float:
    """Mean Jensen-Shannon divergence (bits, 0..1) of each client's token frequencies to the pooled ones."""
    counts = {cid: Counter(t for ex in c.train for t in ex["input_ids"]) for cid, c in data.clients.items()}
    pooled: Counter = Counter()
    for c in counts.values():
        pooled.update(c)
    vocab = sorted(pooled)
    index = {t: i for i, t in enumerate(vocab)}
    q = np.array([pooled[t] for t in vocab], dtype=float)
    q /= q.sum()
    out = []
    for c in counts.values():
        p = np.zeros(len(vocab))
        for t, n in c.items():
            p[index[t]] = n
        if p.sum() == 0:
            continue
        p /= p.sum()
        m = 0.5 * (p + q)
        kl = lambda a, b: float(np.sum(a[a > 0] * np.log2(a[a > 0] / b[a > 0])))  # noqa: E731
        out.append(0.5 * kl(p, m) + 0.5 * kl(q, m))
    return float(np.mean(out)) if out else 0.0


def load_run_model(run_dir: str | Path, *, device: str = "cpu"):
    """Base model + the run's final adapter (PEFT), or the fully fine-tuned model, on ``device``.

    ``device`` is this command's, not the run's ``model.device``: a run trained on a GPU is
    scored wherever it is read. The adapter's files are checked before the base model
    loads, so a truncated or missing adapter is a one-line error, not a traceback.

    Raises:
        FedlmError: ``run_dir`` is not a run directory.
        ModelError: the final adapter (or model) is missing or unreadable.
    """
    where = resolve_device(device)
    run_dir = require_run_dir(run_dir)
    config = load_config(run_dir / "config.yaml")
    adapter = run_dir / final_model_dir(config)
    check_saved_model(adapter, run_dir=run_dir, lora=config.lora.enabled)
    if not config.lora.enabled:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(adapter).to(where)
            tok = AutoTokenizer.from_pretrained(adapter)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise ModelError(f"{adapter} is unreadable ({_first_line(exc)}); rerun or resume the run") from None
        model.eval()
        return config, model, tok
    base, tok = load_base_model(
            config.model.name, dtype=config.model.dtype, seed=config.model.seed, init=config.model.init,
            architecture=config.model.architecture,
        )
    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # transformers 5 deprecates an attribute PEFT still reads
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(base, adapter)
        fold_saved_residuals(model, adapter)  # FedEx-LoRA: residuals the base weights need
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelError(f"the adapter in {adapter} does not fit {config.model.name} or is damaged "
                         f"({_first_line(exc)}); rerun or resume the run") from None
    model.to(where)
    model.eval()
    return config, model, tok


def check_saved_model(folder: Path, *, run_dir: Path, lora: bool) -> None:
    """Refuse a missing, truncated or unparsable adapter (or model) folder before any model loads."""
    if not folder.is_dir():
        raise ModelError(f"{folder} does not exist; the run has not finished (resume it with fedlm run --resume {run_dir})")
    config_name, weights = ("adapter_config.json", "adapter_model.safetensors") if lora else ("config.json", "model.safetensors")
    try:
        json.loads((folder / config_name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / config_name} is missing or not JSON ({_first_line(exc)}); the adapter was not "
                         f"written completely: resume the run (fedlm run --resume {run_dir}) or run it again") from None
    files = [folder / weights] if (folder / weights).is_file() or lora else sorted(folder.glob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:  # the header must cover the whole file
                fh.keys()
        except (OSError, SafetensorError) as exc:
            raise ModelError(f"{file} is truncated or damaged ({_first_line(exc)}); resume the run "
                             f"(fedlm run --resume {run_dir}) or run it again") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def evaluate_run(run_dir: str | Path, *, device: str = "cpu", clients: Literal["run", "all"] = "run") -> dict[str, Any]:
    """Re-evaluate a run's final model on held-out data, saying what was scored.

    Args:
        clients: ``run`` scores the run's evaluation clients (``eval.max_clients``, a seeded
            choice), which reproduces the run's own table; ``all`` scores every client.
            Either way each client contributes at most ``eval.max_batches_per_client``
            batches of ``eval.batch_size`` held-out sequences.

    Returns:
        The pooled metrics, ``clients`` (per client), ``scope`` (what was scored),
        ``run_table`` (the run's own final figures) and ``note`` (how the two compare).
    """
    from fedlm.capabilities import rows_hook

    config, model, tok = load_run_model(run_dir, device=device)
    data = build_federated_data(config.data, tok, cache_dir=cache_dir(), rows_hook=rows_hook(config))
    summary = read_summary(Path(run_dir))
    run_ids = [c for c in ((summary or {}).get("clients") or {}) if c in data.clients]
    ids = run_ids if clients == "run" and run_ids else list(data.clients)
    ev = config.eval
    total, per_client = LMScore(), {}
    for cid in ids:
        s = score_lm(model, data.clients[cid].heldout, pad_id=tok.pad_token_id, batch_size=ev.batch_size,
                     max_batches=ev.max_batches_per_client)
        per_client[cid] = s.as_dict()
        total = total + s
    scores = total.as_dict()
    batches = f"at most {ev.max_batches_per_client} batch(es)" if ev.max_batches_per_client else "all batches"
    scope = {"clients": "run" if ids == run_ids else "all", "scored_clients": len(ids), "of_clients": len(data.clients),
             "per_client": f"{batches} of {ev.batch_size} held-out sequences", "tokens": total.tokens}
    table = (summary or {}).get("final") or {}
    run_table = {"perplexity": table.get("perplexity"), "eval_loss": table.get("eval_loss"),
                 "clients": len(run_ids), "tokens": table.get("tokens")}
    if not run_ids:
        note = f"scored all {len(ids)} clients ({batches} each); the run has no summary.json to compare with"
    elif scope["clients"] == "run":
        note = (f"scored the run's {len(ids)} evaluation clients (eval.max_clients, of {len(data.clients)}), "
                f"{batches} of {ev.batch_size} held-out sequences each: the examples of the run's own table "
                f"(perplexity {run_table['perplexity']:.4g}), so the two agree up to float rounding")
    else:
        note = (f"scored all {len(ids)} clients, {batches} each; the run's table (perplexity "
                f"{run_table['perplexity']:.4g}) scored only its {len(run_ids)} evaluation clients "
                f"(eval.max_clients), so the figures differ by which clients and batches are in the pool; "
                "pass --clients run to reproduce it")
    return {**scores, "clients": per_client, "scope": scope, "run_table": run_table, "note": note}

