"""Decoding a codec payload, every declared size checked before anything is allocated.

A payload (see :mod:`fedlm.compression.codecs` for its layout) declares its codec, the
codec's parameters and each tensor's name, shape and original dtype. Every one of those
is the sender's claim, so :func:`decode_payload` checks, in this order:

1. the payload's length (``max_bytes``) and, with the expected ``shapes``, its header's
   length (:func:`header_limit`), before parsing the header;
2. the codec and its parameters (``resolve``: the server accepts only its own codec);
3. the declared names and shapes against the model's (``shapes``), else the total
   declared elements against ``max_numel``;
4. each stored part's dtype and length against what the codec stores for that tensor
   (``Codec.part_specs``), from the header alone;

and only then copies the parts (exactly the payload's data bytes) and decodes them into
float32 tensors of the checked sizes. So the memory one payload can make the server use
is a small multiple of the model's trainable size, whatever it declares: a 1.5 MiB top-k
payload cannot ask for a 3 GiB tensor. Any failure is ``UpdateRejected``; a failure the
checks did not foresee becomes reason "decode_error" instead of ending the run (tests
assert it never happens).

This module imports neither the codecs nor their registry, so the codec base class can
use it without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedlm.compression.wire import (
    Header,
    Payload,
    is_shape,
    malformed,
    read_header,
    read_tensors,
    strict_json,
)
from fedlm.errors import UpdateRejected
from fedlm.stages import TensorDict

# Without expected shapes, decoding allocates what the payload declares; this caps it.
# 2**30 float32 elements = 4 GiB. With expected shapes the model's size is the cap.
DEFAULT_MAX_NUMEL = 2**30

# Original dtypes a payload may declare (the dtype each tensor is cast back to when no
# expected shapes are given; the server's intake always gets float32).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Generous bounds on an honest header (fedlm's metadata plus safetensors' part entries).
# A name is written JSON-escaped inside a JSON string: at most 14 bytes per character
# (an astral character becomes a doubly escaped surrogate pair).
HEADER_BASE_BYTES = 4096
HEADER_BYTES_PER_TENSOR = 512
HEADER_BYTES_PER_NAME_CHAR = 16
HEADER_BYTES_PER_DIM = 48

Shapes = Mapping[str, Sequence[int]]
PartSpecs = dict[str, tuple[torch.dtype, int]]  # part -> (dtype, length) of one tensor


class PartCodec(Protocol):
    """What decoding needs of a codec (``fedlm.compression.base.Codec`` provides it)."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def part_specs(self, numel: int) -> PartSpecs: ...

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor: ...


# (codec name, parameters as the payload states them) -> the codec to decode with.
Resolver = Callable[[str, dict[str, Any]], PartCodec]


@dataclass(frozen=True)
class Entry:
    """One tensor the payload declares: its name, shape and original dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def check_part(parts: dict[str, torch.Tensor], part: str, dtype: torch.dtype, length: int) -> torch.Tensor:
    """Return ``parts[part]`` after checking it is 1-D, of ``dtype`` and ``length``."""
    t = parts[part]
    if t.dtype != dtype or t.dim() != 1 or t.numel() != length:
        raise malformed(
            f"part {part!r} is {t.dtype} of shape {list(t.shape)}; expected {dtype} of shape [{length}]"
        )
    return t


def header_limit(shapes: Shapes) -> int:
    """Upper bound on the header of an honest payload carrying ``shapes`` (bytes)."""
    return HEADER_BASE_BYTES + sum(
        HEADER_BYTES_PER_TENSOR + HEADER_BYTES_PER_NAME_CHAR * len(name) + HEADER_BYTES_PER_DIM * len(shape)
        for name, shape in shapes.items()
    )


def _json_metadata(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise malformed(f"payload metadata lacks {key!r}")
    try:
        return strict_json(meta[key])
    except ValueError as exc:
        raise malformed(f"metadata {key!r} is not JSON: {str(exc)[:120]}") from None


def _entries(raw: Any) -> list[Entry]:
    """Check the ``tensors`` metadata: a list of [name, shape, dtype] with unique names."""
    if not isinstance(raw, list):
        raise malformed("metadata 'tensors' is not a list")
    entries = []
    for e in raw:
        ok = (
            isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], str)
            and is_shape(e[1])
            and isinstance(e[2], str)
            and e[2] in DTYPES
        )
        if not ok:
            raise malformed(f"tensor entry {str(e)[:80]!r} is not [name, shape, dtype]")
        entries.append(Entry(e[0], tuple(e[1]), DTYPES[e[2]]))
    if len({e.name for e in entries}) != len(entries):
        raise malformed("duplicate tensor names in metadata")
    return entries


def _check_declared(entries: list[Entry], shapes: Shapes | None, max_numel: int) -> None:
    """Names and shapes against the model's; else the total declared elements."""
    if shapes is not None:
        names = {e.name for e in entries}
        if names != shapes.keys():
            extra = sorted(n[:60] for n in names - shapes.keys())[:3]
            missing = sorted(set(shapes) - names)[:3]
            raise UpdateRejected("names", f"payload tensors differ from the model's: unexpected {extra}, missing {missing}")
        for e in entries:
            if e.shape != tuple(shapes[e.name]):
                raise UpdateRejected("shape", f"{e.name} is declared {list(e.shape)[:8]}, the model's is {list(shapes[e.name])}")
        return  # the model's own size bounds the allocation
    total = 0
    for e in entries:
        total += e.numel
        if total > max_numel:
            raise UpdateRejected("too_large", f"payload declares more than max_numel={max_numel} elements")


def _check_parts(codec: PartCodec, entries: list[Entry], header: Header) -> dict[int, PartSpecs]:
    """Each stored part's dtype and length against the codec's, from the header alone."""
    specs = {i: codec.part_specs(e.numel) for i, e in enumerate(entries)}
    expected = {f"{i}.{p}": spec for i, parts in specs.items() for p, spec in parts.items()}
    if header.tensors.keys() != expected.keys():
        diff = sorted(set(header.tensors) ^ set(expected))[:4]
        raise malformed(f"stored parts do not match the metadata (first differences: {[d[:40] for d in diff]})")
    for key, (dtype, length) in expected.items():
        stored = header.tensors[key]
        if stored.dtype != dtype or stored.shape != (length,):
            raise malformed(
                f"part {key!r} is {stored.dtype} of shape {list(stored.shape)[:8]}; expected {dtype} of shape [{length}]"
            )
    return specs


def _decode(
    payload: Payload, resolve: Resolver, shapes: Shapes | None, max_bytes: int | None, max_numel: int
) -> TensorDict:
    limit = None if shapes is None else header_limit(shapes)
    header = read_header(payload, max_bytes=max_bytes, max_header_bytes=limit)
    meta = header.metadata
    name, params = meta.get("codec"), _json_metadata(meta, "params")
    if not isinstance(name, str) or not isinstance(params, dict):
        raise malformed(f"payload names codec {str(name)[:40]!r} with parameters that are not an object")
    codec = resolve(name, params)
    entries = _entries(_json_metadata(meta, "tensors"))
    _check_declared(entries, shapes, max_numel)
    specs = _check_parts(codec, entries, header)
    stored = read_tensors(payload, header)  # exactly the payload's data bytes, all checked
    out: TensorDict = {}
    for i, e in enumerate(entries):
        flat = codec._decode_one({p: stored[f"{i}.{p}"] for p in specs[i]}, e.numel)  # (numel,) float32
        out[e.name] = flat.reshape(e.shape) if shapes is not None else flat.reshape(e.shape).to(e.dtype)
    # The model's order, not the sender's: the server's arithmetic never depends on the sender.
    return out if shapes is None else {k: out[k] for k in shapes}


def decode_payload(
    payload: Payload,
    resolve: Resolver,
    *,
    shapes: Shapes | None = None,
    max_bytes: int | None = None,
    max_numel: int = DEFAULT_MAX_NUMEL,
) -> TensorDict:
    """Decode a payload after checking every declared size (see the module docstring).

    Args:
        payload: the received bytes (hostile: any content at all).
        resolve: maps the payload's codec name and parameters to the codec to decode with;
            raises ``UpdateRejected`` for a codec the receiver does not accept.
        shapes: the expected tensors, name -> shape (the model's trainable tensors). When
            given, the payload must declare exactly these, tensors come back as float32 in
            this order, and the header may not exceed :func:`header_limit`.
        max_bytes: reject longer payloads ("too_large") before reading them.
        max_numel: without ``shapes``, cap on the total elements the payload declares.

    Returns:
        name -> tensor of its declared shape (float32 with ``shapes``, else its declared dtype).

    Raises:
        UpdateRejected: for any input that is not a well-formed payload of the accepted
            codec and shapes, and never any other error.
    """
    try:
        return _decode(payload, resolve, shapes, max_bytes, max_numel)
    except UpdateRejected:
        raise
    except Exception as exc:  # the last line of defence: a client's bytes never end the run
        raise UpdateRejected(
            "decode_error", f"the decoder failed on this payload ({type(exc).__name__}: {str(exc)[:160]})"
        ) from exc


__all__ = [
    "DEFAULT_MAX_NUMEL",
    "DTYPES",
    "DTYPE_NAMES",
    "Entry",
    "PartCodec",
    "PartSpecs",
    "Resolver",
    "check_part",
    "decode_payload",
    "header_limit",
    "malformed",
]
