"""Update codecs: named tensors <-> the exact bytes that cross the wire.

Every codec turns a dict of float tensors (a client's delta, or the server's broadcast)
into one payload made by :func:`fedlm.compression.wire.pack`, so the byte count of an
update is ``len(payload)``, header included, never an estimate. The payload is
self-describing: its metadata names the codec, the codec's parameters, and each
tensor's name, original shape and dtype, so :func:`decode` needs only the bytes.

Payload layout (safetensors): tensor ``i`` of the input (in the order of the
``tensors`` metadata entry) is stored as parts ``"{i}.{part}"``; each part is 1-D.

===========  ======================  ==========  =========  ==================
codec        parts per tensor        unbiased    secagg     bytes / element
===========  ======================  ==========  =========  ==================
``fp32``     v: float32              exact       yes        4
``fp16``     v: float16              no          yes        2
``bf16``     v: bfloat16             no          yes        2
``int8``     q: int8, s: float32     yes         fixed s    1 (+ 4 / block)
``int4``     q: uint8 (2 per byte),  yes         fixed s    0.5 (+ 4 / block)
             s: float32
``topk``     i: int32, v: fp16/fp32  no          no         f * (4 + 2 or 4)
===========  ======================  ==========  =========  ==================

``secagg_compatible`` means the codec is *linear*: decoding the element-wise sum of
several clients' encoded values gives the sum of their updates, so masking for secure
aggregation may act on the encoded values. Integer codecs are linear only with a scale
shared by all clients (``fixed_scale``, e.g. the clipping norm); top-k is never linear
(each client keeps different coordinates). ``needs_individual_updates`` is its
complement: the server must see each client's payload to decode it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from fedlm.compression.base import DEFAULT_MAX_NUMEL, DTYPES, Codec, FloatCodec, malformed
from fedlm.compression.quantize import StochasticQuantCodec
from fedlm.compression.topk import TopKCodec
from fedlm.compression.wire import unpack
from fedlm.errors import ConfigError, UpdateRejected
from fedlm.registry import Registry
from fedlm.stages import TensorDict

CODECS: Registry[Codec] = Registry("codec")
CODECS.register("fp32", lambda: FloatCodec("float32"))
CODECS.register("fp16", lambda: FloatCodec("float16"))
CODECS.register("bf16", lambda: FloatCodec("bfloat16"))
CODECS.register("int8", lambda **kw: StochasticQuantCodec(8, **kw))
CODECS.register("int4", lambda **kw: StochasticQuantCodec(4, **kw))
CODECS.register("topk", lambda **kw: TopKCodec(**kw))


def _parse_json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise malformed(f"payload metadata lacks {key!r}")
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise malformed(f"metadata {key!r} is not JSON: {exc}") from None


def _parse_entries(raw: Any) -> list[tuple[str, list[int], torch.dtype]]:
    """Check the ``tensors`` metadata: a list of [name, shape, dtype]."""
    if not isinstance(raw, list):
        raise malformed("metadata 'tensors' is not a list")
    entries = []
    for e in raw:
        ok = (
            isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], str)
            and isinstance(e[1], list)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in e[1])
            and e[2] in DTYPES
        )
        if not ok:
            raise malformed(f"tensor entry {str(e)[:80]!r} is not [name, shape, dtype]")
        entries.append((e[0], e[1], DTYPES[e[2]]))
    if len({e[0] for e in entries}) != len(entries):
        raise malformed("duplicate tensor names in metadata")
    return entries


def decode(
    payload: bytes, *, expect: Codec | None = None, max_numel: int = DEFAULT_MAX_NUMEL
) -> TensorDict:
    """Decode any payload made by a registered codec, using only its bytes.

    Args:
        payload: bytes from ``Codec.encode``.
        expect: when given, the payload must name this codec with the same parameters
            (the server should accept only the configured codec).
        max_numel: cap on the total elements the payload may declare (guards memory).

    Returns:
        name -> tensor with the original shape and dtype.

    Raises:
        UpdateRejected: always, for any malformed or unexpected payload ("malformed",
            "schema", "codec_mismatch", "too_large").
    """
    stored, meta = unpack(payload)
    name = meta.get("codec")
    params = _parse_json(meta, "params")
    if not isinstance(name, str) or name not in CODECS or not isinstance(params, dict):
        raise malformed(f"payload names unknown codec {str(name)[:40]!r}")
    if expect is not None and (name != expect.name or params != expect.params()):
        raise UpdateRejected(
            "codec_mismatch",
            f"payload uses {name} {params}; expected {expect.name} {expect.params()}",
        )
    try:
        codec = expect if expect is not None else CODECS.create(name, **params)
    except (ConfigError, TypeError) as exc:
        raise malformed(f"bad parameters for codec {name!r}: {exc}") from None
    entries = _parse_entries(_parse_json(meta, "tensors"))
    expected_keys = {f"{i}.{p}" for i in range(len(entries)) for p in codec.parts}
    if set(stored) != expected_keys:
        extra = sorted(set(stored) ^ expected_keys)[:4]
        raise malformed(f"stored parts do not match the metadata (first differences: {extra})")
    total = 0
    out: TensorDict = {}
    for i, (key, shape, dtype) in enumerate(entries):
        numel = math.prod(shape)
        total += numel
        if total > max_numel:
            raise UpdateRejected(
                "too_large", f"payload declares more than max_numel={max_numel} elements"
            )
        parts = {p: stored[f"{i}.{p}"] for p in codec.parts}
        out[key] = codec._decode_one(parts, numel).reshape(shape).to(dtype)
    return out


__all__ = [
    "CODECS",
    "DEFAULT_MAX_NUMEL",
    "Codec",
    "FloatCodec",
    "StochasticQuantCodec",
    "TopKCodec",
    "decode",
]
