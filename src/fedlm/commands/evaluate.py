"""Library functions behind ``fedlm data inspect``, ``fedlm generate`` and ``fedlm eval``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlm.capabilities.hetero import fold_saved_residuals
from fedlm.commands.experiment import final_model_dir
from fedlm.config.loader import load_config
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, build_federated_data
from fedlm.errors import ModelError
from fedlm.eval.metrics import LMScore, score_lm
from fedlm.models.device import module_device, resolve_device, to_device
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
    scored wherever it is read.
    """
    where = resolve_device(device)
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    adapter = run_dir / final_model_dir(config)
    if not adapter.is_dir():
        raise ModelError(f"{adapter} does not exist; the run has not finished (resume it with fedlm run --resume {run_dir})")
    if not config.lora.enabled:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(adapter).to(where)
        model.eval()
        return config, model, AutoTokenizer.from_pretrained(adapter)
    base, tok = load_base_model(
            config.model.name, dtype=config.model.dtype, seed=config.model.seed, init=config.model.init,
            architecture=config.model.architecture,
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, adapter)
    fold_saved_residuals(model, adapter)  # FedEx-LoRA: residuals the base weights need
    model.to(where)
    model.eval()
    return config, model, tok


@torch.no_grad()
def generate(run_dir: str | Path, prompt: str, *, max_new_tokens: int = 64, chat: bool = False,
             device: str = "cpu") -> str:
    """Greedy continuation of ``prompt`` by base + adapter."""
    _, model, tok = load_run_model(run_dir, device=device)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True) if chat else prompt
    enc = to_device(tok(text, return_tensors="pt", add_special_tokens=False), module_device(model))
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def evaluate_run(run_dir: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    """Re-evaluate a run's final adapter on every client's held-out data."""
    config, model, tok = load_run_model(run_dir, device=device)
    data = build_federated_data(config.data, tok, cache_dir=cache_dir())
    total, per_client = LMScore(), {}
    for cid, c in data.clients.items():
        s = score_lm(model, c.heldout, pad_id=tok.pad_token_id, batch_size=config.eval.batch_size,
                     max_batches=config.eval.max_batches_per_client)
        per_client[cid] = s.as_dict()
        total = total + s
    return {**total.as_dict(), "clients": per_client}


def benchmark_scores(
    *,
    run_dir: str | Path | None = None,
    model_name: str | None = None,
    benchmarks: list[str] | None = None,
    path: str | None = None,
    max_items: int | None = None,
    chat: bool | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Offline benchmark scores of a run's final model, or of a base model alone, on ``device``.

    Settings come from the run's ``eval_harness`` section (defaults for a base model);
    the arguments given override them. ``path`` is the dataset folder of the one
    benchmark asked for.

    Returns:
        ``{"model": ..., "run": ..., "benchmarks": {name: metrics}}``.

    Raises:
        ConfigError: neither or both of ``run_dir`` and ``model_name``, or ``path`` with
            several benchmarks.
    """
    from pydantic import ValidationError

    from fedlm.config.eval_harness import BENCHMARK_NAMES, EvalHarnessConfig
    from fedlm.errors import ConfigError
    from fedlm.eval.benchmarks import EVAL_BENCHMARKS, run_benchmarks

    if (run_dir is None) == (model_name is None):
        raise ConfigError("give exactly one of --run RUN_DIR and --model NAME (a preset, HF directory or hub id)")
    if run_dir is not None:
        config, model, tok = load_run_model(run_dir, device=device)
        cfg, name = config.eval_harness, config.model.name
    else:
        model, tok = load_base_model(model_name)
        model.to(resolve_device(device))
        model.eval()
        cfg, name = EvalHarnessConfig(), model_name
    changes: dict[str, Any] = {k: v for k, v in
                               {"benchmarks": benchmarks, "max_items": max_items, "chat": chat, "batch_size": batch_size}.items()
                               if v is not None}
    names = changes.get("benchmarks", cfg.benchmarks)
    if path is not None:
        if len(names) != 1:
            raise ConfigError(f"--path names one dataset folder, but {len(names)} benchmarks are asked for {names}; "
                              "give one --benchmark")
        changes[EVAL_BENCHMARKS.create(names[0]).config_field] = path
    unknown = [b for b in names if b not in BENCHMARK_NAMES]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARK_NAMES)}")
    try:
        cfg = EvalHarnessConfig(**{**cfg.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(f"invalid benchmark settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return {"model": name, "run": str(run_dir) if run_dir is not None else None,
            "benchmarks": run_benchmarks(cfg, model, tok)}

