"""Data: sources, formats, partitioners, formatting and per-client train/held-out splits."""

from fedlm.data.federated import ClientData, FederatedData, build_client_data, build_federated_data
from fedlm.data.formatting import (
    IGNORE,
    chunk_lm,
    collate,
    format_chat,
    format_completion,
    format_instruction,
)

__all__ = [
    "IGNORE",
    "ClientData",
    "FederatedData",
    "build_client_data",
    "build_federated_data",
    "chunk_lm",
    "collate",
    "format_chat",
    "format_completion",
    "format_instruction",
]
