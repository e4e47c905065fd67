"""fedlm: federated pre-training, fine-tuning and personalisation of language models.

The small public API. ``import fedlm`` stays light (no torch) so configs can be loaded
and validated anywhere; the runtime symbols load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedlm.config import ExperimentConfig, load_config
from fedlm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FedlmError,
    ModelError,
    PipelineError,
    ProtocolError,
    UpdateRejected,
)

__version__ = "0.1.0"

_LAZY = {
    "RunResult": "fedlm.commands.experiment",
    "resume_experiment": "fedlm.commands.experiment",
    "run_experiment": "fedlm.commands.experiment",
    "Simulation": "fedlm.engine.simulation",
    "build_engine": "fedlm.capabilities",
    "Capability": "fedlm.engine.capability",
    "InjectedStages": "fedlm.engine.capability",
    "ClientUpdate": "fedlm.stages",
    "CohortValue": "fedlm.stages",
    "Pipeline": "fedlm.stages",
    "RoundPlan": "fedlm.stages",
    "Stage": "fedlm.stages",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedlm' has no attribute {name!r}")


__all__ = [
    "Capability",
    "CheckpointError",
    "ClientUpdate",
    "CohortValue",
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FedlmError",
    "InjectedStages",
    "ModelError",
    "Pipeline",
    "PipelineError",
    "ProtocolError",
    "RoundPlan",
    "RunResult",
    "Simulation",
    "Stage",
    "UpdateRejected",
    "__version__",
    "build_engine",
    "load_config",
    "resume_experiment",
    "run_experiment",
]
