"""Config of update compression: the upload and download codecs and their knobs.

No torch here (the config package must load without it). ``CODECS`` below is the single
source of codec names: each entry is the import path of the codec's factory in
``fedlm.compression.codecs`` (loaded when a run builds one) and the extra parameters it
reads. A test checks ``secagg_compatible`` against the codecs' own attribute.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.registry import Registry

# The codecs, with the extra parameters each reads from ``upload_params``/``download_params``
# (any other key is an error, so a config never carries a value that silently does nothing;
# block_size and topk_fraction are top-level fields shared by both directions).
CODECS: Registry = Registry("codec")
CODECS.register("fp32", "fedlm.compression.codecs:fp32", info=frozenset())
CODECS.register("fp16", "fedlm.compression.codecs:fp16", info=frozenset())
CODECS.register("bf16", "fedlm.compression.codecs:bf16", info=frozenset())
CODECS.register("int8", "fedlm.compression.codecs:int8", info=frozenset({"fixed_scale"}))
CODECS.register("int4", "fedlm.compression.codecs:int4", info=frozenset({"fixed_scale"}))
CODECS.register("topk", "fedlm.compression.codecs:topk", info=frozenset({"value_dtype"}))
CODEC_PARAMS: dict[str, frozenset[str]] = {name: CODECS.info(name) for name in CODECS.in_order()}
_QUANT = ("int8", "int4")
_FLOATS = ("fp32", "fp16", "bf16")

Direction = Literal["upload", "download"]


class CompressionConfig(BaseModel):
    """Codecs for client uploads and server broadcasts (see ``fedlm.compression.codecs``).

    int8/int4: stochastic uniform quantisation (Alistarh et al., 2017, QSGD). topk:
    sparsification (Lin et al., 2018, Deep Gradient Compression), best with error
    feedback (Stich et al., 2018).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    upload: str = Field(
        default="fp32", description=f"codec for client updates, one of {sorted(CODEC_PARAMS)}"
    )
    upload_params: dict[str, float | str] = Field(
        default_factory=dict,
        description="extra upload codec parameters: fixed_scale (int8/int4, a scale shared by all "
        "clients, needed for secure aggregation) or value_dtype (topk: float16 or float32)",
    )
    download: str = Field(
        default="fp32", description=f"codec for the server broadcast, one of {sorted(CODEC_PARAMS)}"
    )
    download_params: dict[str, float | str] = Field(
        default_factory=dict,
        description="extra download codec parameters (same keys as upload_params)",
    )
    block_size: int | None = Field(
        default=None,
        description="int8/int4 elements per scale (a power of two >= 8, e.g. 64, 128, 256); "
        "null for one scale per tensor",
    )
    topk_fraction: float = Field(
        default=0.01, description="share of each tensor's entries that topk keeps, in (0, 1]"
    )
    error_feedback: bool = Field(
        default=False,
        description="keep what the upload codec dropped on each client and add it to the next "
        "update (one residual per client; recommended with topk)",
    )

    @field_validator("upload", "download")
    @classmethod
    def _known_codec(cls, value: str, info: Any) -> str:
        if value not in CODEC_PARAMS:
            raise ValueError(
                f"compression.{info.field_name}={value!r} is not a codec; "
                f"choose one of {sorted(CODEC_PARAMS)}"
            )
        return value

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and (value < 8 or value & (value - 1)):
            raise ValueError(
                f"compression.block_size={value} must be a power of two >= 8 "
                "(e.g. 64, 128, 256) or null"
            )
        return value

    @field_validator("topk_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not (0.0 < value <= 1.0):
            raise ValueError(f"compression.topk_fraction={value} must be in (0, 1], e.g. 0.01")
        return value

    @model_validator(mode="after")
    def _check_params(self) -> CompressionConfig:
        for direction in ("upload", "download"):
            name: str = getattr(self, direction)
            params: dict[str, float | str] = getattr(self, f"{direction}_params")
            field = f"compression.{direction}_params"
            unknown = sorted(set(params) - CODEC_PARAMS[name])
            if unknown:
                raise ValueError(
                    f"{field} has {unknown}, which codec {name!r} does not read; "
                    f"allowed: {sorted(CODEC_PARAMS[name]) or 'none'}"
                )
            if "value_dtype" in params and params["value_dtype"] not in ("float16", "float32"):
                raise ValueError(
                    f"{field}.value_dtype={params['value_dtype']!r} must be 'float16' or 'float32'"
                )
            if "fixed_scale" in params:
                scale = params["fixed_scale"]
                if isinstance(scale, str) or not math.isfinite(scale) or scale <= 0:
                    raise ValueError(f"{field}.fixed_scale={scale!r} must be a positive number")
        if self.block_size is not None and not any(
            self.uses_blocks(d) for d in ("upload", "download")
        ):
            raise ValueError(
                f"compression.block_size={self.block_size} is set but no codec reads it "
                "(only int8/int4 "
                "without fixed_scale do); unset it or choose such a codec"
            )
        return self

    def uses_blocks(self, direction: Direction) -> bool:
        """Whether ``direction``'s codec is a quantiser that takes ``block_size``."""
        return getattr(self, direction) in _QUANT and "fixed_scale" not in getattr(
            self, f"{direction}_params"
        )

    def codec_spec(self, direction: Direction) -> tuple[str, dict[str, Any]]:
        """(name, keyword arguments) for ``CODECS.create`` in ``direction``."""
        name: str = getattr(self, direction)
        kwargs: dict[str, Any] = dict(getattr(self, f"{direction}_params"))
        if self.uses_blocks(direction):
            kwargs["block_size"] = self.block_size
        if name == "topk":
            kwargs["fraction"] = self.topk_fraction
        return name, kwargs

    @property
    def secagg_compatible(self) -> bool:
        """Whether the upload codec is linear, so secure aggregation may mask its output.

        Float casts are; int8/int4 only with a shared ``fixed_scale``; topk never.
        """
        return self.upload in _FLOATS or (
            self.upload in _QUANT and "fixed_scale" in self.upload_params
        )


__all__ = ["CODECS", "CODEC_PARAMS", "CompressionConfig"]
