"""``fedlm eval --benchmark``: offline benchmark scores of a run's model or of a base model alone.

The scoring itself is :mod:`fedlm.eval.benchmarks`'. This module settles, before any model
loads, where each benchmark's files are, so a missing dataset costs nothing and the error
says how to pass it:

1. ``--path`` (one benchmark), else
2. the run's ``eval_harness`` paths, when they were set in its config, else
3. ``$FEDLM_DATA/<folder>`` (``mmlu-redux-medical``, ``pubmedqa``) when ``FEDLM_DATA`` is set, else
4. the harness defaults (``../shared/datasets/...``, from the current directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from fedlm.config.loader import DATA_ENV
from fedlm.errors import ConfigError, DataError

# What each benchmark's files are, for the error that asks for them.
NEEDS = {
    "mmlu-medical": "the MMLU-Redux medical CSVs (a folder of mmlu_<subject>.csv)",
    "pubmedqa": "PubMedQA's folder (ori_pqal.json and test_ground_truth.json)",
    "qa": "a JSON or JSONL file of question/answer rows",
}


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
    console: Console | None = None,
) -> dict[str, Any]:
    """Offline benchmark scores of a run's final model, or of a base model alone, on ``device``.

    Settings come from the run's ``eval_harness`` section (defaults for a base model);
    the arguments given override them. ``path`` is the dataset folder (or file) of the one
    benchmark asked for.

    Returns:
        ``{"model": ..., "run": ..., "benchmarks": {name: metrics}}``.

    Raises:
        ConfigError: neither or both of ``run_dir`` and ``model_name``, ``path`` with several
            benchmarks, or an unknown benchmark.
        DataError: a benchmark's files are not where they are looked for (says how to pass them).
    """
    from fedlm.config.eval_harness import BENCHMARK_NAMES, EvalHarnessConfig

    console = console or Console(stderr=True)
    if (run_dir is None) == (model_name is None):
        raise ConfigError("give exactly one of --run RUN_DIR and --model NAME (a preset, HF directory or hub id)")
    if run_dir is not None:
        from fedlm.commands.run_dir import require_run_dir
        from fedlm.config.loader import load_config

        run_config = load_config(require_run_dir(run_dir) / "config.yaml")
        cfg, name = run_config.eval_harness, run_config.model.name
    else:
        cfg, name = EvalHarnessConfig(), model_name
    changes: dict[str, Any] = {k: v for k, v in {"benchmarks": benchmarks, "max_items": max_items, "chat": chat,
                                                  "batch_size": batch_size}.items() if v is not None}
    names = changes.get("benchmarks", cfg.benchmarks)
    unknown = [b for b in names if b not in BENCHMARK_NAMES]
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARK_NAMES)}")
    if path is not None and len(names) != 1:
        raise ConfigError(f"--path names one dataset folder, but {len(names)} benchmarks are asked for {names}; "
                          "give one --benchmark")
    for bench in names:  # before the model loads: a missing dataset costs nothing
        field = _field(bench)
        given = str(Path(path).expanduser().resolve()) if path is not None else None
        changes[field] = given or _default_location(field, getattr(cfg, field))
        _require_dataset(bench, changes[field], from_flag=path is not None)
    cfg = _harness(cfg, changes)
    with console.status(f"loading model {name}" + (" (the first load converts its GGUF, about 15 s)"
                                                   if name == "smollm2-135m" else "")):
        model, tok = _load(run_dir, model_name, device)
    from fedlm.eval.benchmarks import run_benchmarks

    scores = run_benchmarks(cfg, model, tok, console=console)  # a progress bar with an ETA per benchmark
    return {"model": name, "run": str(run_dir) if run_dir is not None else None, "benchmarks": scores}


def _field(bench: str) -> str:
    """The ``eval_harness`` field holding a benchmark's dataset path (``mmlu-medical`` -> ``mmlu_path``)."""
    from fedlm.eval.benchmarks import EVAL_BENCHMARKS

    return EVAL_BENCHMARKS.create(bench).config_field


def _default_location(field: str, current: str | None) -> str | None:
    """``$FEDLM_DATA/<folder>`` in place of a harness default, when FEDLM_DATA is set."""
    from fedlm.config.eval_harness import EvalHarnessConfig
    from fedlm.eval.benchmarks import EVAL_BENCHMARKS, dataset_folder

    default = EvalHarnessConfig.model_fields[field].default
    root = os.environ.get(DATA_ENV)
    bench = next((n for n in EVAL_BENCHMARKS.names() if EVAL_BENCHMARKS.create(n).config_field == field), None)
    if root and current and current == default and bench is not None:
        return str(dataset_folder(bench, root))
    return current


def _harness(cfg, changes: dict[str, Any]):
    from pydantic import ValidationError

    from fedlm.config.eval_harness import EvalHarnessConfig

    try:
        return EvalHarnessConfig(**{**cfg.model_dump(), **changes})
    except (ValidationError, ConfigError) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        raise ConfigError(f"invalid benchmark settings: {detail['loc']}: {detail['msg']}" if detail
                          else f"invalid benchmark settings: {exc}") from None


def _require_dataset(bench: str, where: str | None, *, from_flag: bool) -> None:
    """Raise DataError saying how to pass the dataset when ``where`` does not exist."""
    if where and Path(where).expanduser().exists():
        return
    from fedlm.eval.benchmarks import EVAL_BENCHMARKS

    folder = EVAL_BENCHMARKS.create(bench).folder_name
    how = f"pass --path {'DIR' if folder else 'FILE'} with --benchmark {bench}"
    if folder:
        how += f", or export {DATA_ENV}=DIR where DIR/{folder}/ holds it"
    found = f"not found at {Path(where).expanduser().resolve()}" if where else "no path is set"
    raise DataError(f"{bench} needs {NEEDS[bench]}: {found}{' (--path)' if from_flag else ''}; {how}")


def _load(run_dir: str | Path | None, model_name: str | None, device: str):
    if run_dir is not None:
        from fedlm.commands.evaluate import load_run_model

        _, model, tok = load_run_model(run_dir, device=device)
        return model, tok
    from fedlm.models.device import resolve_device
    from fedlm.models.loading import load_base_model

    where = resolve_device(device)
    model, tok = load_base_model(model_name)
    model.to(where)
    model.eval()
    return model, tok


__all__ = ["benchmark_scores"]
