"""The wire format of tensor payloads: safetensors bytes plus string metadata.

Every update and broadcast is serialised here, so byte counts in the metrics are
``len(payload)`` of the bytes that would cross the network, nothing estimated.

Reading is split in two because a payload is hostile until proven otherwise:
:func:`read_header` parses and checks only the JSON header (its length is checked
before it is parsed), so callers can compare every declared name, dtype and shape with
what they expect *before* :func:`read_tensors` copies any tensor data. Header and
offsets follow the safetensors spec strictly (Python's ``json`` alone would accept
duplicate keys, ``NaN`` and a ``null`` metadata block); anything else raises
``UpdateRejected`` with reason "malformed", "schema" or "too_large", never another error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save as st_save

from fedlm.errors import UpdateRejected
from fedlm.stages import TensorDict

SCHEMA_VERSION = "1"

# safetensors dtype codes this reader understands. The spec fixes little-endian, which is
# what torch.frombuffer reads on every platform torch ships for (x86-64, ARM64). No BOOL:
# an arbitrary byte is not a valid torch bool, and no codec stores one.
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
_ITEM_BYTES = {code: torch.empty((), dtype=dtype).element_size() for code, dtype in ST_DTYPES.items()}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})

Payload = bytes | bytearray | memoryview


@dataclass(frozen=True)
class StoredTensor:
    """One tensor the header declares; ``start``/``end`` are byte offsets into the payload."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked header: string metadata and the declared tensors (nothing read yet)."""

    metadata: dict[str, str]
    tensors: dict[str, StoredTensor]


def malformed(detail: str) -> UpdateRejected:
    return UpdateRejected("malformed", detail)


def pack(tensors: TensorDict, *, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise named tensors (contiguous, on CPU) with fedlm's schema version."""
    meta = {"fedlm_schema": SCHEMA_VERSION, **(metadata or {})}
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` hook: a duplicated key is an error (the last one would silently win)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:60]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as safetensors does: no duplicate keys, no NaN/Infinity; errors -> ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ValueError(f"nested too deeply ({exc})") from None


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


def is_shape(shape: object) -> bool:
    """A list of sizes torch can hold: even an empty tensor's nonzero sizes multiply below 2**63."""
    return isinstance(shape, list) and all(_is_count(d) for d in shape) and math.prod(d for d in shape if d) < 2**63


def _stored(name: str, raw: object, data_start: int) -> StoredTensor:
    if not (isinstance(raw, dict) and raw.keys() == _ENTRY_KEYS):
        raise malformed(f"tensor {name[:60]!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not (isinstance(dtype, str) and dtype in ST_DTYPES):
        raise malformed(f"tensor {name[:60]!r} has unsupported dtype {str(dtype)[:20]!r}")
    if not is_shape(shape):
        raise malformed(f"tensor {name[:60]!r} has a shape that is not a list of sizes below 2**63")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise malformed(f"tensor {name[:60]!r} has data_offsets that are not [begin, end]")
    begin, end = offsets
    nbytes = math.prod(shape) * _ITEM_BYTES[dtype]
    if end < begin or end - begin != nbytes:
        raise malformed(f"tensor {name[:60]!r} spans {end - begin} bytes; its shape needs {nbytes}")
    return StoredTensor(ST_DTYPES[dtype], tuple(shape), data_start + begin, data_start + end)


def read_header(
    payload: Payload, *, max_bytes: int | None = None, max_header_bytes: int | None = None
) -> Header:
    """Parse and check a payload's header without touching its tensor data.

    Args:
        payload: the received bytes.
        max_bytes: reject ("too_large") a longer payload before reading anything.
        max_header_bytes: reject ("too_large") a longer header before parsing it.

    Raises:
        UpdateRejected: "too_large", "malformed" (not safetensors, offsets that do not tile
            the data exactly, a non-string metadata value, ...) or "schema" (not fedlm's).
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise malformed(f"payload is a {type(payload).__name__}, not bytes")
    try:
        view = memoryview(payload).cast("B")
    except TypeError as exc:  # a non-contiguous or oddly formatted buffer
        raise malformed(f"payload is not a flat byte buffer: {exc}") from None
    size = view.nbytes
    if max_bytes is not None and size > max_bytes:
        raise UpdateRejected("too_large", f"payload of {size} bytes exceeds the limit of {max_bytes}")
    if size < 10:
        raise malformed(f"payload of {size} bytes is too short for a safetensors header")
    n = int.from_bytes(view[:8], "little")
    if n < 2 or n > size - 8:
        raise malformed(f"header length {n} does not fit a payload of {size} bytes")
    if max_header_bytes is not None and n > max_header_bytes:
        raise UpdateRejected("too_large", f"header of {n} bytes exceeds the limit of {max_header_bytes}")
    try:
        header = strict_json(bytes(view[8 : 8 + n]).decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise malformed(f"header is not strict UTF-8 JSON: {str(exc)[:120]}") from None
    if not isinstance(header, dict):
        raise malformed("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        raise UpdateRejected("schema", "payload has no __metadata__ (missing or null); it was not made by fedlm")
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise malformed("__metadata__ is not an object of strings")
    if meta.get("fedlm_schema") != SCHEMA_VERSION:
        raise UpdateRejected(
            "schema", f"payload schema {str(meta.get('fedlm_schema'))[:20]!r} is not {SCHEMA_VERSION!r}; upgrade the client"
        )
    tensors = {name: _stored(name, raw, 8 + n) for name, raw in header.items()}
    # The data must be tiled exactly, in offset order: no gap, overlap or trailing bytes.
    cursor = 8 + n
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start != cursor:
            raise malformed(f"tensor data at byte {t.start} does not follow the previous tensor's end {cursor}")
        cursor = t.end
    if cursor != size:
        raise malformed(f"tensor data ends at byte {cursor} but the payload has {size}")
    return Header(metadata=meta, tensors=tensors)


def read_tensors(payload: Payload, header: Header, names: list[str] | None = None) -> TensorDict:
    """Copy the declared tensors (``names``, default all) out of a payload read by ``read_header``.

    Allocates exactly the declared bytes, which ``read_header`` proved lie inside the payload.
    """
    view = memoryview(payload).cast("B")
    out: TensorDict = {}
    for name in header.tensors if names is None else names:
        t = header.tensors[name]
        if t.end == t.start:
            out[name] = torch.empty(t.shape, dtype=t.dtype)
        else:  # a private copy: a tensor over the caller's (possibly immutable) buffer would alias it
            out[name] = torch.frombuffer(bytearray(view[t.start : t.end]), dtype=t.dtype).reshape(t.shape)
    return out


def unpack(payload: Payload, *, max_bytes: int | None = None) -> tuple[TensorDict, dict[str, str]]:
    """Parse a whole payload; any malformed input becomes ``UpdateRejected``."""
    header = read_header(payload, max_bytes=max_bytes)
    return read_tensors(payload, header), dict(header.metadata)


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Raw bytes of the tensor data alone (no header), for ratios."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


__all__ = [
    "SCHEMA_VERSION",
    "Header",
    "StoredTensor",
    "is_shape",
    "pack",
    "read_header",
    "read_tensors",
    "strict_json",
    "tensor_bytes",
    "unpack",
]
