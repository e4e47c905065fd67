"""The wire format of tensor payloads: safetensors bytes plus string metadata.

Every update and broadcast is serialised here, so byte counts in the metrics are
``len(payload)`` of the bytes that would cross the network, nothing estimated.
"""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedlm.errors import UpdateRejected
from fedlm.stages import TensorDict

SCHEMA_VERSION = "1"


def pack(tensors: TensorDict, *, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise named tensors (contiguous, on CPU) with fedlm's schema version."""
    meta = {"fedlm_schema": SCHEMA_VERSION, **(metadata or {})}
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)


def unpack(payload: bytes) -> tuple[TensorDict, dict[str, str]]:
    """Parse a payload; any malformed input becomes ``UpdateRejected('malformed', ...)``."""
    if not isinstance(payload, (bytes, bytearray)) or len(payload) < 8:
        raise UpdateRejected("malformed", "payload is not a safetensors byte string")
    header_len = int.from_bytes(payload[:8], "little")
    if header_len <= 0 or header_len > len(payload) - 8:
        raise UpdateRejected("malformed", f"header length {header_len} exceeds payload of {len(payload)} bytes")
    try:
        tensors = st_load(bytes(payload))
        # safetensors' Python loader drops metadata; read it from the JSON header.
        header = json.loads(payload[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError, TypeError, OverflowError) as exc:
        raise UpdateRejected("malformed", f"cannot parse payload: {exc}") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if not isinstance(meta, dict) or meta.get("fedlm_schema") != SCHEMA_VERSION:
        raise UpdateRejected(
            "schema", f"payload schema {meta.get('fedlm_schema')!r} is not {SCHEMA_VERSION!r}; upgrade the client"
        )
    return dict(tensors), {str(k): str(v) for k, v in meta.items()}


def tensor_bytes(tensors: TensorDict) -> int:
    """Raw bytes of the tensor data alone (no header), for ratios."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


__all__ = ["SCHEMA_VERSION", "pack", "tensor_bytes", "unpack"]
