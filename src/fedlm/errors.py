"""The small hierarchy of errors fedlm raises.

Every message names what is wrong and how to fix it. The CLI prints these as one
message (no traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FedlmError(Exception):
    """Base class of every error fedlm raises on purpose."""


class ConfigError(FedlmError, ValueError):
    """A config value, key or combination is invalid."""


class DataError(FedlmError, ValueError):
    """A dataset file is missing or a row is malformed (names file and line)."""


class ModelError(FedlmError):
    """A base model or adapter cannot be loaded."""


class PipelineError(FedlmError):
    """Stages were composed in an order or combination that cannot work."""


class ProtocolError(FedlmError):
    """A message broke a protocol: out of phase, wrong sender, replayed, wrong size."""


class UpdateRejected(FedlmError):
    """A client update failed validation; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CheckpointError(FedlmError):
    """A checkpoint is missing, incomplete or from another experiment."""
