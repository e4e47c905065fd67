"""Update codecs: named tensors <-> the exact bytes that cross the wire.

Every codec turns a dict of float tensors (a client's delta, or the server's broadcast)
into one payload made by :func:`fedlm.compression.wire.pack`, so the byte count of an
update is ``len(payload)``, header included, never an estimate. The payload is
self-describing: its metadata names the codec, the codec's parameters, and each
tensor's name, original shape and dtype, so :func:`decode` needs only the bytes.
Those bytes are hostile until checked: the server decodes with the model's expected
shapes and a byte limit, and :mod:`fedlm.compression.payload` checks every declared
size against them before allocating anything.

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

from typing import Any

from fedlm.compression.base import Codec, FloatCodec
from fedlm.compression.payload import DEFAULT_MAX_NUMEL, Shapes, decode_payload, malformed
from fedlm.compression.quantize import StochasticQuantCodec
from fedlm.compression.topk import TopKCodec
from fedlm.compression.wire import Payload
from fedlm.config.compression import CODECS
from fedlm.errors import ConfigError
from fedlm.stages import TensorDict


# The factories ``fedlm.config.compression.CODECS`` names (the single source of codec names).
def fp32() -> Codec:
    return FloatCodec("float32")


def fp16() -> Codec:
    return FloatCodec("float16")


def bf16() -> Codec:
    return FloatCodec("bfloat16")


def int8(**kw: Any) -> Codec:
    return StochasticQuantCodec(8, **kw)


def int4(**kw: Any) -> Codec:
    return StochasticQuantCodec(4, **kw)


def topk(**kw: Any) -> Codec:
    return TopKCodec(**kw)


def _from_registry(name: str, params: dict[str, Any]) -> Codec:
    """Resolver for ``decode_payload``: build whichever registered codec the payload names."""
    if name not in CODECS:
        raise malformed(f"payload names unknown codec {name[:40]!r}")
    try:
        return CODECS.create(name, **params)
    except (ConfigError, TypeError) as exc:
        raise malformed(f"bad parameters for codec {name!r}: {str(exc)[:160]}") from None


def decode(
    payload: Payload,
    *,
    expect: Codec | None = None,
    shapes: Shapes | None = None,
    max_bytes: int | None = None,
    max_numel: int = DEFAULT_MAX_NUMEL,
) -> TensorDict:
    """Decode any payload made by a registered codec, using only its bytes.

    Args:
        payload: bytes from ``Codec.encode``, or anything at all.
        expect: when given, the payload must name this codec with the same parameters
            (the server should accept only the configured codec; ``expect.decode`` is the same).
        shapes: the expected tensors, name -> shape; see ``Codec.decode``.
        max_bytes: reject longer payloads ("too_large") before reading them.
        max_numel: without ``shapes``, cap on the elements the payload may declare.

    Returns:
        name -> tensor with the declared shape (float32 with ``shapes``, else the original dtype).

    Raises:
        UpdateRejected: always, for any malformed or unexpected payload ("malformed",
            "schema", "codec_mismatch", "names", "shape", "too_large").
    """
    resolve = _from_registry if expect is None else expect.accept
    return decode_payload(payload, resolve, shapes=shapes, max_bytes=max_bytes, max_numel=max_numel)


__all__ = [
    "CODECS",
    "DEFAULT_MAX_NUMEL",
    "Codec",
    "FloatCodec",
    "StochasticQuantCodec",
    "TopKCodec",
    "decode",
]
