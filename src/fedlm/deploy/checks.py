"""Reading what a peer sent: bounded JSON, typed fields and safetensors checked before allocation.

Everything a node receives from another machine goes through these helpers, and they
raise only :class:`~fedlm.errors.ProtocolError` (a :class:`~fedlm.errors.FedlmError`),
whatever the bytes: a malformed reply is the sender's dropout, never the end of a run.

Sizes are checked before anything is allocated. A JSON header is refused above its
limit before it is parsed. A safetensors blob's header is read here first (8 bytes of
length, then a JSON table of ``name -> dtype, shape, data_offsets``) and every entry
is checked against the shapes the receiver expects and against the blob's own length;
only then does ``safetensors`` build tensors, so a peer cannot make a node allocate more
than it sent, nor a tensor of a shape the model does not have.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedlm.errors import ProtocolError

if TYPE_CHECKING:
    from fedlm.stages import TensorDict

META_LIMIT = 1 << 20  # bytes of a reply's JSON header (counts and metrics: kilobytes)
REQUEST_META_LIMIT = 64 << 20  # a server's request header carries every client's sizes
MAX_NAME = 512  # characters of an id, a tensor name or a metric name
MAX_ENTRIES = 1_000_000  # keys of one JSON object (the byte limits bound the rest)

# safetensors dtype -> bytes per element; updates and plans carry floating point only
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
Shapes = Mapping[str, tuple[int, ...]]


def bad(what: str, detail: str) -> ProtocolError:
    return ProtocolError(f"{what}: {detail}")


# -- JSON ------------------------------------------------------------------------------------
def read_json(data: Any, *, what: str, limit: int = META_LIMIT) -> Any:
    """``data`` (bytes) parsed as UTF-8 JSON, refused above ``limit`` bytes before parsing."""
    if not isinstance(data, (bytes, bytearray)):
        raise bad(what, f"is a {type(data).__name__}, not bytes")
    if len(data) > limit:
        raise bad(what, f"is {len(data)} bytes, more than the {limit} allowed")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise bad(what, f"is not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


def as_dict(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise bad(what, f"is a {type(v).__name__}, not an object")
    if len(v) > MAX_ENTRIES:
        raise bad(what, f"has {len(v)} entries, more than {MAX_ENTRIES}")
    return v


def as_str(v: Any, what: str, *, max_len: int = MAX_NAME, empty: bool = False) -> str:
    if not isinstance(v, str):
        raise bad(what, f"is a {type(v).__name__}, not a string")
    if len(v) > max_len or (not v and not empty):
        raise bad(what, f"has {len(v)} characters (allowed: {0 if empty else 1} to {max_len})")
    return v


def as_int(v: Any, what: str, *, lo: int | None = 0, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(what, f"is a {type(v).__name__}, not an integer")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad(what, f"is {v}, outside [{lo}, {hi}]")
    return v


def as_float(v: Any, what: str, *, finite: bool = False, lo: float | None = None) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise bad(what, f"is a {type(v).__name__}, not a number")
    x = float(v)
    if finite and not math.isfinite(x):
        raise bad(what, f"is {x}, not a finite number")
    if lo is not None and not x >= lo:  # NaN fails too
        raise bad(what, f"is {x}, below {lo}")
    return x


def as_bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise bad(what, f"is a {type(v).__name__}, not true/false")
    return v


def scalars(v: Any, what: str) -> dict[str, Any]:
    """A flat dict of names -> numbers, booleans, short strings or null (metrics)."""
    out = {}
    for k, x in as_dict(v, what).items():
        as_str(k, f"{what} key")
        if isinstance(x, str):
            as_str(x, f"{what}[{k[:40]!r}]", max_len=4 * MAX_NAME, empty=True)
        elif x is not None and not isinstance(x, (int, float)):  # bool is an int
            raise bad(f"{what}[{k[:40]!r}]", f"is a {type(x).__name__}, not a number")
        out[k] = x
    return out


def strings(v: Any, what: str) -> dict[str, str]:
    """A flat dict of names -> strings (a failure record)."""
    return {as_str(k, f"{what} key"): as_str(x, f"{what}[{k[:40]!r}]", max_len=8 * MAX_NAME, empty=True)
            for k, x in as_dict(v, what).items()}


def seconds(v: Any, what: str) -> dict[str, float]:
    return {as_str(k, f"{what} key"): as_float(x, f"{what}[{k[:40]!r}]", finite=True, lo=0.0)
            for k, x in as_dict(v, what).items()}


# -- safetensors -------------------------------------------------------------------------------
def tensor_table(data: bytes, *, what: str, shapes: Shapes | None = None,
                 nested: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check a safetensors blob's header; returns name -> (dtype, shape).

    Args:
        data: the blob.
        what: what it is, for the error message.
        shapes: the shape each name must have; None: any shape.
        nested: names are a plan's ``Kind/field/name`` keys; ``name`` is checked against ``shapes``.

    Raises:
        ProtocolError: the header is too long, not JSON, names an unknown tensor, a
            non-float dtype, another shape, or offsets outside, overlapping or short of the data.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise bad(what, f"is a {type(data).__name__}, not bytes")
    if len(data) < 8:
        raise bad(what, f"is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8 or n > META_LIMIT:
        raise bad(what, f"declares a {n}-byte header in {len(data)} bytes")
    header = as_dict(read_json(bytes(data[8:8 + n]), what=f"{what} header"), f"{what} header")
    body = len(data) - 8 - n
    spans, table = [], {}
    for name, entry in header.items():
        if name == "__metadata__":
            strings(entry, f"{what} metadata")
            continue
        as_str(name, f"{what} tensor name", max_len=4 * MAX_NAME)
        entry = as_dict(entry, f"{what} {name[:60]!r}")
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(what, f"entry {name[:60]!r} has fields {sorted(map(str, entry))[:5]}")
        dtype = entry["dtype"]
        if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
            raise bad(what, f"tensor {name[:60]!r} has dtype {str(dtype)[:20]!r}; allowed: {sorted(FLOAT_DTYPES)}")
        shape = entry["shape"]
        if not isinstance(shape, list) or len(shape) > 8:
            raise bad(what, f"tensor {name[:60]!r} has a malformed shape")
        shape = tuple(as_int(d, f"{what} {name[:60]!r} shape", lo=0, hi=1 << 40) for d in shape)
        if shapes is not None:
            parts = name.split("/", 2)
            if nested and len(parts) != 3:
                raise bad(what, f"tensor {name[:60]!r} is not a Kind/field/name key")
            key = parts[-1] if nested else name
            if key not in shapes:
                raise bad(what, f"names a tensor {key[:60]!r} the model does not have")
            if shape != tuple(shapes[key]):
                raise bad(what, f"tensor {key[:60]!r} has shape {list(shape)}, the model's is {list(shapes[key])}")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise bad(what, f"tensor {name[:60]!r} has malformed data_offsets")
        begin, end = (as_int(o, f"{what} {name[:60]!r} offset", lo=0, hi=body) for o in offsets)
        if end - begin != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise bad(what, f"tensor {name[:60]!r} spans {end - begin} bytes for shape {list(shape)} {dtype}")
        spans.append((begin, end))
        table[name] = (dtype, shape)
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            raise bad(what, "tensor data overlaps or leaves gaps")
        at = end
    if at != body:
        raise bad(what, f"tensor data covers {at} of {body} bytes")
    return table


def load_tensors(data: bytes, *, what: str, shapes: Shapes | None = None, nested: bool = False) -> TensorDict:
    """The tensors of a checked blob (:func:`tensor_table` first; empty bytes: none)."""
    if isinstance(data, (bytes, bytearray)) and not data:
        return {}
    tensor_table(data, what=what, shapes=shapes, nested=nested)
    from safetensors.torch import load as st_load

    try:
        return dict(st_load(bytes(data)))
    except Exception as exc:  # the header passed; anything the library still refuses is malformed
        raise bad(what, f"unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None


__all__ = ["FLOAT_DTYPES", "META_LIMIT", "REQUEST_META_LIMIT", "as_bool", "as_dict", "as_float", "as_int",
           "as_str", "bad", "load_tensors", "read_json", "scalars", "seconds", "strings", "tensor_table"]
