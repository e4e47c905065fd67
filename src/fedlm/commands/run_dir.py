"""Checks on run directories, made before anything slow is loaded.

A command given a file where a run directory belongs, a folder that is not a run, or an
``--out`` that cannot become one fails here with one line that says what to pass, not
with a traceback after the model has loaded.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fedlm.config.schema import ExperimentConfig
from fedlm.errors import CheckpointError, ConfigError, FedlmError


def default_run_dir(config: ExperimentConfig, out_dir: str | Path | None) -> Path:
    """``out_dir``, else ``output.dir``, else ``runs/NAME-YYYYmmdd-HHMMSS``."""
    return Path(out_dir or config.output.dir or f"runs/{config.name}-{datetime.now():%Y%m%d-%H%M%S}")


def config_digest(config: ExperimentConfig) -> str:
    """Identity of an experiment for resume: everything but the round count, output and deployment settings."""
    data = config.model_dump(mode="json")
    data.pop("output", None)
    data.pop("deploy", None)  # timeouts and node counts may be tuned between a crash and its resume
    data["federation"].pop("rounds", None)
    data["model"].pop("device", None)  # a run may resume on another device: state is kept on the CPU
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def final_model_dir(config: ExperimentConfig) -> str:
    """``adapter`` for LoRA runs, ``model`` for full training (an HF model directory)."""
    return "adapter" if config.lora.enabled else "model"


def require_run_dir(path: str | Path, *, need: tuple[str, ...] = ("config.yaml",), what: str = "run directory") -> Path:
    """``path`` as a run directory holding the files in ``need``.

    Raises:
        FedlmError: it is missing, a file, or lacks one of ``need``.
    """
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise FedlmError(f"{what} {run_dir} does not exist; pass the folder `fedlm run --out` wrote")
    if not run_dir.is_dir():
        raise FedlmError(f"{run_dir} is a file, but a {what} (a folder) is expected; pass the folder `fedlm run` wrote")
    missing = [name for name in need if not (run_dir / name).exists()]
    if missing:
        hint = ("the run has not finished (continue it with fedlm run --resume "
                f"{run_dir})" if (run_dir / "config.yaml").exists() else "it is not a fedlm run directory")
        raise FedlmError(f"{run_dir} lacks {', '.join(missing)}: {hint}")
    return run_dir


def check_out_dir(path: str | Path, *, flag: str = "--out") -> Path:
    """``path`` as a place a new run (or export) may be written: a folder that holds no run yet, or nothing.

    Raises:
        ConfigError: it is a file, lies under a file, or already holds a run.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file; give a folder to write (a new or empty one)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {out} lies under {parent}, which is a file; choose another {flag}")
            break
    if (out / "metrics.jsonl").exists():
        raise CheckpointError(f"{out} already holds a run; pass --resume {out} or choose another {flag}")
    return out


def check_export_dir(path: str | Path, *, flag: str) -> Path:
    """An export target: a new folder, or an empty existing one (an export never overwrites files)."""
    out = check_out_dir(path, flag=flag)
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{flag} {out} is not empty; give a new or empty folder (an export never overwrites)")
    return out


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``summary.json``, or None when the run has not finished."""
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resume_config(run_config: ExperimentConfig, given: ExperimentConfig) -> ExperimentConfig:
    """The config ``fedlm run --resume RUN_DIR -c GIVEN`` continues with: ``given`` when it is the run's experiment.

    Only what a resume may change (``federation.rounds``, output, deployment and device
    settings) may differ; ``given`` is then applied (e.g. more rounds).

    Raises:
        ConfigError: ``given`` is another experiment; names the first keys that differ.
    """
    if config_digest(given) == config_digest(run_config):
        return given
    diff = _differences(run_config.model_dump(mode="json"), given.model_dump(mode="json"))
    ignored = ("output.", "deploy.", "federation.rounds", "model.device")
    diff = sorted([d for d in diff if not d[0].startswith(ignored)] or diff, key=lambda d: (d[0].count("."), d[0]))
    shown = "; ".join(f"{k}: run {a!r}, -c {b!r}" for k, a, b in diff[:3]) + ("; ..." if len(diff) > 3 else "")
    raise ConfigError(
        f"--resume continues the run with its own config.yaml, and -c names another experiment "
        f"({len(diff)} setting(s) differ: {shown}); "
        "drop -c (change the round count with --set federation.rounds=N), or start a new run with another --out"
    )


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


__all__ = ["check_export_dir", "check_out_dir", "default_run_dir", "final_model_dir", "read_summary", "require_run_dir", "resume_config"]
