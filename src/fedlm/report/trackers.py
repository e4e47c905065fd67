"""Optional trackers: round and evaluation scalars mirrored to TensorBoard and MLflow.

``Trackers.log(record)`` takes the same records ``metrics.jsonl`` gets and writes their
numeric leaves (nested keys joined by ``/``, e.g. ``eval/eval_loss``, ``round/bytes_up``)
at step = the round. TensorBoard writes ``RUN_DIR/tensorboard``; MLflow uses a local
SQLite store ``RUN_DIR/mlflow.db`` (no server). Both are imported only when asked for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedlm.errors import ConfigError

# Per-client and per-stage details stay in metrics.jsonl; trackers get the headline figures.
_SKIP = {"clients", "server", "cohort", "rejected", "audit", "contribution"}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """Numeric top-level fields of a record (plus ``seconds/*`` and ``privacy/*``), keyed by type."""
    kind = record.get("type", "record")
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in _SKIP or k in ("type", "round"):
            continue
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, (int, float)) and not isinstance(v2, bool) and math.isfinite(v2):
                    out[f"{kind}/{k}/{k2}"] = float(v2)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{kind}/{k}"] = float(v)
    return out


class Trackers:
    """The trackers of ``report.trackers``; ``log`` each record, ``close`` at the end.

    Raises:
        ConfigError: a tracker whose package is not installed.
    """

    def __init__(self, names: list[str], run_dir: str | Path, *, run_name: str = "run") -> None:
        self.run_dir = Path(run_dir)
        self._tb = None
        self._mlflow = None
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("report.trackers has 'tensorboard' but it is not installed; "
                                  "pip install tensorboard (or fedlm[track])") from exc
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "mlflow" in names:
            try:
                import mlflow
            except ImportError as exc:
                raise ConfigError("report.trackers has 'mlflow' but it is not installed; "
                                  "pip install mlflow (or fedlm[track])") from exc
            self.run_dir.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}")
            mlflow.set_experiment(run_name)
            self._mlflow = mlflow
            self._mlflow_run = mlflow.start_run(run_name=run_name)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("round", 0))
        values = scalars(record)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._mlflow is not None and values:
            self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def mirror(names: list[str], run_dir: str | Path, records: list[dict[str, Any]], *, run_name: str = "run") -> None:
    """Write every record of a finished (or resumed) run to the trackers ``names``."""
    if not names:
        return
    trackers = Trackers(names, run_dir, run_name=run_name)
    try:
        for record in records:
            trackers.log(record)
    finally:
        trackers.close()
