"""Config of optional experiment trackers (TensorBoard, MLflow with a local SQLite store).

Each tracker is an optional extra (``pip install 'fedlm[track]'``); this module must not
import torch or the trackers, so a config is validated before anything is loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ReportConfig(BaseModel):
    """Where round and evaluation metrics are mirrored besides ``metrics.jsonl``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trackers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Mirror metrics to TensorBoard (RUN_DIR/tensorboard) and/or MLflow "
        "(local SQLite store RUN_DIR/mlflow.db); each needs its package installed.",
    )

    @field_validator("trackers")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"report.trackers lists a tracker twice: {v}")
        return v
