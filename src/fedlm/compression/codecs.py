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
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from fedlm.compression.wire import pack, unpack
from fedlm.errors import ConfigError, UpdateRejected
from fedlm.registry import Registry
from fedlm.stages import TensorDict

# Decoding allocates dense tensors whose size a payload declares; top-k payloads can
# declare far more elements than they carry. 2**30 float32 elements = 4 GiB.
DEFAULT_MAX_NUMEL = 2**30

# Original dtypes a payload may declare (the dtype each tensor is cast back to).
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def _malformed(detail: str) -> UpdateRejected:
    return UpdateRejected("malformed", detail)


def _check_part(
    parts: dict[str, torch.Tensor], part: str, dtype: torch.dtype, length: int
) -> torch.Tensor:
    """Return ``parts[part]`` after checking it is 1-D, of ``dtype`` and ``length``."""
    t = parts[part]
    if t.dtype != dtype or t.dim() != 1 or t.numel() != length:
        raise _malformed(
            f"part {part!r} is {t.dtype} of shape {list(t.shape)}; "
            f"expected {dtype} of shape [{length}]"
        )
    return t


class Codec(ABC):
    """Base class of update codecs.

    Subclasses set ``name`` and implement the per-tensor ``_encode_one``/``_decode_one``
    on flat float32 tensors; this class does validation, metadata and (de)serialisation.

    Attributes:
        name: registry name, written into every payload.
        stochastic: whether encoding draws random numbers (needs a generator).
        unbiased: whether E[decode(encode(x))] == x.
        secagg_compatible: whether decoding is linear in the encoded values (see module doc).
        needs_individual_updates: whether the server must decode each client's payload.
    """

    name: str
    stochastic: ClassVar[bool] = False
    unbiased: bool = False
    secagg_compatible: bool = False
    needs_individual_updates: bool = True

    @property
    @abstractmethod
    def parts(self) -> tuple[str, ...]:
        """Names of the stored parts of one tensor."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable), written into each payload."""

    @abstractmethod
    def _encode_one(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Encode a flat float32 tensor ``x`` (shape (n,)) into its parts."""

    @abstractmethod
    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        """Decode parts into a flat float32 tensor of ``numel`` elements; raise UpdateRejected."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}<{self.name}>({args})"

    def encode(self, tensors: TensorDict, *, generator: torch.Generator | None = None) -> bytes:
        """Serialise named float tensors into one payload.

        Args:
            tensors: name -> floating-point tensor (any shape, any device). Values are
                encoded from float32 (float64 loses precision); decode restores the dtype.
            generator: CPU generator for stochastic codecs (int8, int4); ignored otherwise.

        Raises:
            ConfigError: a stochastic codec got no generator.
            UpdateRejected: a tensor is not floating point, holds non-finite values,
                or cannot be represented (``reason`` "overflow"/"out_of_range").
        """
        if self.stochastic and generator is None:
            raise ConfigError(
                f"codec {self.name!r} rounds stochastically and needs a generator; pass "
                "generator=torch.Generator().manual_seed(seed)"
            )
        entries: list[list[Any]] = []
        stored: TensorDict = {}
        for i, (key, t) in enumerate(tensors.items()):
            if t.dtype not in _DTYPE_NAMES:
                raise UpdateRejected(
                    "dtype", f"tensor {key!r} has dtype {t.dtype}; codecs take {sorted(_DTYPES)}"
                )
            x = t.detach().to("cpu", torch.float32).reshape(-1)
            if not bool(torch.isfinite(x).all()):
                raise UpdateRejected(
                    "non_finite", f"tensor {key!r} holds NaN or inf; cannot encode it"
                )
            entries.append([str(key), list(t.shape), _DTYPE_NAMES[t.dtype]])
            for part, value in self._encode_one(x, generator).items():
                # Inputs are finite, so inf here means a narrowing cast overflowed
                # (float16 saturates at 65504).
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise UpdateRejected(
                        "overflow",
                        f"tensor {key!r} exceeds the {value.dtype} range; use bf16 or fp32",
                    )
                stored[f"{i}.{part}"] = value
        metadata = {
            "codec": self.name,
            "params": json.dumps(self.params(), sort_keys=True),
            "tensors": json.dumps(entries, separators=(",", ":")),
        }
        return pack(stored, metadata=metadata)

    def decode(self, payload: bytes, *, max_numel: int = DEFAULT_MAX_NUMEL) -> TensorDict:
        """Decode a payload that this codec (same name and parameters) produced.

        Raises:
            UpdateRejected: malformed payload, or "codec_mismatch" when another codec made it.
        """
        return decode(payload, expect=self, max_numel=max_numel)


class FloatCodec(Codec):
    """Cast to a narrower float format (round to nearest even); deterministic, biased.

    Error bound per coordinate: fp32 is exact. fp16 (10 stored mantissa bits):
    ``|x̂ - x| <= 2^-11 |x|`` for ``2^-14 <= |x| <= 65504``, and ``<= 2^-25`` below
    (subnormal spacing 2^-24); larger values are rejected. bf16 (7 mantissa bits, fp32's
    exponent range): ``|x̂ - x| <= 2^-8 |x|``. Linear (a cast), so secagg-compatible.

    Args:
        dtype: "float32", "float16" or "bfloat16".
    """

    stochastic: ClassVar[bool] = False
    secagg_compatible = True
    needs_individual_updates = False

    def __init__(self, dtype: str) -> None:
        names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
        if dtype not in names:
            raise ConfigError(f"FloatCodec dtype {dtype!r} is not one of {sorted(names)}")
        self.dtype = dtype
        self.name = names[dtype]
        self.unbiased = dtype == "float32"

    @property
    def parts(self) -> tuple[str, ...]:
        return ("v",)

    def params(self) -> dict[str, Any]:
        return {}

    def _encode_one(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        return {"v": x.to(_DTYPES[self.dtype])}

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        return _check_part(parts, "v", _DTYPES[self.dtype], numel).float()


class StochasticQuantCodec(Codec):
    """b-bit stochastic uniform quantisation with per-tensor or per-block scales.

    QSGD-style (Alistarh et al., 2017, "QSGD: Communication-Efficient SGD via Gradient
    Quantization and Encoding"), with max-abs scaling instead of the L2 norm. With
    ``s = 2^(b-1) - 1`` levels each side (127 for int8, 7 for int4) and a block's scale
    ``c = max|x|`` over the block, each coordinate ``y = s x / c`` is rounded to
    ``floor(y)`` or ``floor(y) + 1`` with probability ``y - floor(y)``, so
    ``E[x̂] = x`` (unbiased) and ``|x̂ - x| < c / s`` per coordinate.

    int8 stores one signed byte per element; int4 stores ``q + 8`` (in 1..15) as nibbles,
    two per byte, low nibble first, the last byte padded with a zero code when the
    element count is odd. Scales are float32, one per tensor or one per ``block_size``
    elements (flattened, last block short).

    Args:
        bits: 8 or 4.
        block_size: elements per scale; None for one scale per tensor.
        fixed_scale: a scale shared by all clients (e.g. the clipping norm) instead of a
            per-block max; makes the codec linear (secagg-compatible). Inputs with
            ``|x| > fixed_scale`` are rejected ("out_of_range"). Not stored in payloads.
    """

    stochastic: ClassVar[bool] = True
    unbiased = True

    def __init__(
        self, bits: int, *, block_size: int | None = None, fixed_scale: float | None = None
    ) -> None:
        if bits not in (4, 8):
            raise ConfigError(f"quantisation bits={bits!r} is not supported; use 8 or 4")
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
        ):
            raise ConfigError(f"block_size={block_size!r} must be a positive integer or None")
        if fixed_scale is not None and (
            isinstance(fixed_scale, bool)
            or not isinstance(fixed_scale, (int, float))
            or not math.isfinite(fixed_scale)
            or fixed_scale <= 0
        ):
            raise ConfigError(
                f"fixed_scale={fixed_scale!r} must be a positive finite number or None"
            )
        if fixed_scale is not None and block_size is not None:
            raise ConfigError(
                "fixed_scale and block_size are exclusive; a fixed scale has no blocks"
            )
        self.bits = bits
        self.name = f"int{bits}"
        self.levels = 2 ** (bits - 1) - 1
        self.block_size = block_size
        self.fixed_scale = None if fixed_scale is None else float(fixed_scale)
        self.secagg_compatible = fixed_scale is not None
        self.needs_individual_updates = fixed_scale is None

    @property
    def parts(self) -> tuple[str, ...]:
        return ("q",) if self.fixed_scale is not None else ("q", "s")

    def params(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "fixed_scale": self.fixed_scale}

    def _num_scales(self, n: int) -> int:
        return 1 if self.block_size is None else -(-n // self.block_size)

    def _scales_per_element(self, scales: torch.Tensor, n: int) -> torch.Tensor:
        if self.block_size is None:
            return scales.expand(n)
        # Gather (not repeat_interleave): memory stays O(n) whatever block_size a payload names.
        return scales[torch.arange(n) // self.block_size]

    def _encode_one(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        n = x.numel()
        if self.fixed_scale is not None:
            scales = torch.tensor([self.fixed_scale], dtype=torch.float32)
            if n and float(x.abs().max()) > self.fixed_scale:
                raise UpdateRejected(
                    "out_of_range",
                    f"max |x| = {float(x.abs().max()):.4g} exceeds fixed_scale={self.fixed_scale}; "
                    "clip the update to that norm first",
                )
        elif self.block_size is None:
            scales = x.abs().amax().reshape(1) if n else torch.zeros(1)
        else:
            pad = self._num_scales(n) * self.block_size - n
            blocks = torch.nn.functional.pad(x, (0, pad)).reshape(-1, self.block_size)  # (nb, B)
            scales = blocks.abs().amax(dim=1)  # (nb,)
        c = self._scales_per_element(scales, n)  # (n,)
        # All-zero blocks have scale 0; divide by 1 there so they encode to code 0.
        y = (x / torch.where(c > 0, c, torch.ones_like(c)) * self.levels).clamp(
            -self.levels, self.levels
        )
        low = torch.floor(y)
        up = torch.rand(n, generator=generator) < (y - low)  # P(round up) = frac(y)
        q = (low + up.float()).to(torch.int8)  # (n,) in [-s, s]
        if self.bits == 4:
            codes = (q + 8).to(torch.uint8)
            if n % 2:
                codes = torch.cat([codes, torch.full((1,), 8, dtype=torch.uint8)])
            q = codes[0::2] | (codes[1::2] << 4)  # (ceil(n/2),) two codes per byte
        out = {"q": q}
        if self.fixed_scale is None:
            out["s"] = scales.float()
        return out

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        if self.fixed_scale is not None:
            scales = torch.tensor([self.fixed_scale], dtype=torch.float32)
        else:
            scales = _check_part(parts, "s", torch.float32, self._num_scales(numel))
            if not bool((torch.isfinite(scales) & (scales >= 0)).all()):
                raise _malformed("scales must be finite and non-negative")
        if self.bits == 8:
            q = _check_part(parts, "q", torch.int8, numel)
        else:
            packed = _check_part(parts, "q", torch.uint8, -(-numel // 2))
            codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)  # (2 ceil(n/2),)
            if numel % 2 and int(codes[-1]) != 8:
                raise _malformed("int4 padding nibble is not the zero code 8")
            q = codes[:numel].to(torch.int8) - 8
        if numel and (int(q.min()) < -self.levels or int(q.max()) > self.levels):
            raise _malformed(f"quantised code outside [-{self.levels}, {self.levels}]")
        return q.float() * (self._scales_per_element(scales, numel) / self.levels)


class TopKCodec(Codec):
    """Top-k sparsification: keep the ``k = ceil(fraction * n)`` largest-magnitude entries.

    Per tensor (as Lin et al., 2018, "Deep Gradient Compression", do per layer). Stores
    ascending int32 indices and the kept values in ``value_dtype``. Deterministic and
    biased; Stich et al. (2018, "Sparsified SGD with Memory") show it converges when the
    dropped mass is fed back next round (error feedback, see ``stages.py``).

    Error bound: ``||x̂ - x||^2 <= (1 - k/n) ||x||^2`` (the contraction property), every
    dropped coordinate is no larger in magnitude than every kept one, and kept values
    carry the cast error of ``value_dtype`` (fp16: relative 2^-11). Not linear.

    Args:
        fraction: share of entries kept per tensor, in (0, 1].
        value_dtype: "float16" (2 bytes) or "float32" (4 bytes) per kept value.
    """

    name = "topk"
    stochastic: ClassVar[bool] = False
    secagg_compatible = False
    needs_individual_updates = True

    def __init__(self, *, fraction: float, value_dtype: str = "float16") -> None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not (0.0 < fraction <= 1.0)
        ):
            raise ConfigError(f"topk fraction={fraction!r} must be in (0, 1], e.g. 0.01")
        if value_dtype not in ("float16", "float32"):
            raise ConfigError(f"topk value_dtype={value_dtype!r} must be 'float16' or 'float32'")
        self.fraction = float(fraction)
        self.value_dtype = value_dtype

    @property
    def parts(self) -> tuple[str, ...]:
        return ("i", "v")

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "value_dtype": self.value_dtype}

    def num_kept(self, n: int) -> int:
        """Entries kept of a tensor of ``n`` elements: ceil(fraction * n), at least 1 if n > 0."""
        return min(n, max(1, math.ceil(self.fraction * n))) if n else 0

    def _encode_one(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        if x.numel() >= 2**31:
            raise UpdateRejected("too_large", f"{x.numel()} elements exceed int32 indices")
        k = self.num_kept(x.numel())
        idx = torch.sort(torch.topk(x.abs(), k, sorted=False).indices).values  # (k,) ascending
        return {"i": idx.to(torch.int32), "v": x[idx].to(_DTYPES[self.value_dtype])}

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        k = self.num_kept(numel)
        idx = _check_part(parts, "i", torch.int32, k).long()
        values = _check_part(parts, "v", _DTYPES[self.value_dtype], k)
        # Ascending and in range => unique; one canonical encoding per sparse tensor.
        if k and (int(idx[0]) < 0 or int(idx[-1]) >= numel or bool((idx[1:] <= idx[:-1]).any())):
            raise _malformed(f"top-k indices must be strictly ascending in [0, {numel})")
        out = torch.zeros(numel, dtype=torch.float32)
        out[idx] = values.float()
        return out


CODECS: Registry[Codec] = Registry("codec")
CODECS.register("fp32", lambda: FloatCodec("float32"))
CODECS.register("fp16", lambda: FloatCodec("float16"))
CODECS.register("bf16", lambda: FloatCodec("bfloat16"))
CODECS.register("int8", lambda **kw: StochasticQuantCodec(8, **kw))
CODECS.register("int4", lambda **kw: StochasticQuantCodec(4, **kw))
CODECS.register("topk", lambda **kw: TopKCodec(**kw))


def _parse_json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        raise _malformed(f"payload metadata lacks {key!r}")
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"metadata {key!r} is not JSON: {exc}") from None


def _parse_entries(raw: Any) -> list[tuple[str, list[int], torch.dtype]]:
    """Check the ``tensors`` metadata: a list of [name, shape, dtype]."""
    if not isinstance(raw, list):
        raise _malformed("metadata 'tensors' is not a list")
    entries = []
    for e in raw:
        ok = (
            isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], str)
            and isinstance(e[1], list)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in e[1])
            and e[2] in _DTYPES
        )
        if not ok:
            raise _malformed(f"tensor entry {str(e)[:80]!r} is not [name, shape, dtype]")
        entries.append((e[0], e[1], _DTYPES[e[2]]))
    if len({e[0] for e in entries}) != len(entries):
        raise _malformed("duplicate tensor names in metadata")
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
        raise _malformed(f"payload names unknown codec {str(name)[:40]!r}")
    if expect is not None and (name != expect.name or params != expect.params()):
        raise UpdateRejected(
            "codec_mismatch",
            f"payload uses {name} {params}; expected {expect.name} {expect.params()}",
        )
    try:
        codec = expect if expect is not None else CODECS.create(name, **params)
    except (ConfigError, TypeError) as exc:
        raise _malformed(f"bad parameters for codec {name!r}: {exc}") from None
    entries = _parse_entries(_parse_json(meta, "tensors"))
    expected_keys = {f"{i}.{p}" for i in range(len(entries)) for p in codec.parts}
    if set(stored) != expected_keys:
        extra = sorted(set(stored) ^ expected_keys)[:4]
        raise _malformed(f"stored parts do not match the metadata (first differences: {extra})")
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
