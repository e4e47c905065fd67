"""The codec interface and the lossless-to-half-precision float codecs.

A :class:`Codec` turns named tensors into one self-describing payload (see
:mod:`fedlm.compression.codecs` for the payload layout and the table of codecs);
subclasses define only how one flat tensor becomes parts and back.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from fedlm.compression.payload import (
    DEFAULT_MAX_NUMEL,
    DTYPE_NAMES,
    DTYPES,
    PartSpecs,
    Shapes,
    check_part,
    decode_payload,
    malformed,
)
from fedlm.compression.wire import Payload, pack
from fedlm.errors import ConfigError, UpdateRejected
from fedlm.stages import TensorDict


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
    def part_specs(self, numel: int) -> PartSpecs:
        """Dtype and length of each stored part of a tensor of ``numel`` elements.

        Decoding checks a payload's header against these before reading any data.
        """

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
            if t.dtype not in DTYPE_NAMES:
                raise UpdateRejected(
                    "dtype", f"tensor {key!r} has dtype {t.dtype}; codecs take {sorted(DTYPES)}"
                )
            x = t.detach().to("cpu", torch.float32).reshape(-1)
            if not bool(torch.isfinite(x).all()):
                raise UpdateRejected(
                    "non_finite", f"tensor {key!r} holds NaN or inf; cannot encode it"
                )
            entries.append([str(key), list(t.shape), DTYPE_NAMES[t.dtype]])
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

    def decode(
        self,
        payload: Payload,
        *,
        shapes: Shapes | None = None,
        max_bytes: int | None = None,
        max_numel: int = DEFAULT_MAX_NUMEL,
    ) -> TensorDict:
        """Decode a payload that this codec (same name and parameters) produced.

        Args:
            payload: the received bytes; any content at all.
            shapes: the expected tensors, name -> shape. The server's intake must pass the
                model's trainable shapes: every declared size is then checked against them
                before anything is allocated, and tensors come back as float32.
            max_bytes: reject longer payloads ("too_large") before reading them.
            max_numel: without ``shapes``, cap on the elements the payload may declare.

        Raises:
            UpdateRejected: only this, for any malformed or unexpected payload;
                "codec_mismatch" when another codec (or other parameters) made it.
        """
        return decode_payload(payload, self.accept, shapes=shapes, max_bytes=max_bytes, max_numel=max_numel)

    def accept(self, name: str, params: dict[str, Any]) -> Codec:
        """Resolver for ``decode_payload``: only this codec with these parameters."""
        if name != self.name or params != self.params():
            raise UpdateRejected(
                "codec_mismatch",
                f"payload uses {name[:40]} {str(params)[:120]}; expected {self.name} {self.params()}",
            )
        return self


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
        return {"v": x.to(DTYPES[self.dtype])}

    def part_specs(self, numel: int) -> PartSpecs:
        return {"v": (DTYPES[self.dtype], numel)}

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        return check_part(parts, "v", DTYPES[self.dtype], numel).float()


__all__ = ["DEFAULT_MAX_NUMEL", "DTYPES", "Codec", "FloatCodec", "malformed"]
