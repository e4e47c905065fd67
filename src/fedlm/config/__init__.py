"""Experiment configuration: schema, YAML loading and dotted overrides."""

from fedlm.config.loader import apply_override, dump_config, load_config, validate_config
from fedlm.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    FederationConfig,
    LoraConfig,
    ModelConfig,
    OutputConfig,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "FederationConfig",
    "LoraConfig",
    "ModelConfig",
    "OutputConfig",
    "apply_override",
    "dump_config",
    "load_config",
    "validate_config",
]
