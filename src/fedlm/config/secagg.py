"""Config of secure aggregation (SecAgg+, Bell et al. 2020) and of its quantisation.

No torch here. The protocol itself lives in ``fedlm.privacy.secagg``; this model only
holds the knobs and rejects combinations that cannot work.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SecAggConfig(BaseModel):
    """Secure aggregation: the server learns only the (weighted) sum of the cohort.

    Defaults: b = 16 quantisation bits and m = 32 modulus bits, so each masked value is
    one uint32 (upload 1.0x fp32) and the sum has 16 bits of headroom (up to 65,537
    clients at weight 1). The neighbour degree and Shamir threshold follow
    ``fedlm.privacy.secagg.graph`` unless set here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(default=False, description="mask client updates with SecAgg+")
    bits: int = Field(
        default=16,
        description="quantisation levels 2^bits per coordinate, in [1, 32]",
    )
    modulus_bits: int = Field(
        default=32,
        description="sums are taken mod 2^modulus_bits, in [2, 64]; ceil(m/8) bytes per value on the wire",
    )
    clip_range: float = Field(
        default=1.0,
        description="each coordinate is clipped to [-clip_range, clip_range] before quantisation",
    )
    max_weight: int = Field(
        default=1,
        description="largest integer weight a client may give its update (1: plain sum)",
    )
    threshold: int | None = Field(
        default=None,
        description="Shamir threshold t (shares needed per secret); None: from threshold_fraction",
    )
    threshold_fraction: float = Field(
        default=0.5,
        description="t = floor(fraction * neighbours) + 1; in [0.5, 1] so t is a strict majority",
    )
    neighbours: int | None = Field(
        default=None,
        description="degree k of the neighbour graph; None: complete for n <= 31, else about 6 log2(n)",
    )
    dropout_rate: float = Field(
        default=0.0,
        description="simulation only: chance in [0, 1) that a client drops at a random phase",
    )
    seed: int | None = Field(
        default=None,
        description="simulation only: seeds the graph, injected dropouts and rounding noise",
    )

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not 1 <= v <= 32:
            raise ValueError(f"secagg.bits={v} must be in [1, 32]; 16 is the usual choice")
        return v

    @field_validator("modulus_bits")
    @classmethod
    def _modulus_bits(cls, v: int) -> int:
        if not 2 <= v <= 64:
            raise ValueError(f"secagg.modulus_bits={v} must be in [2, 64]; 32 gives uint32 values")
        return v

    @field_validator("clip_range")
    @classmethod
    def _clip(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"secagg.clip_range={v} must be a positive finite number")
        return v

    @field_validator("max_weight")
    @classmethod
    def _max_weight(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"secagg.max_weight={v} must be >= 1 (1 means unweighted)")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: int | None) -> int | None:
        if v is not None and v < 2:
            raise ValueError(
                f"secagg.threshold={v} must be >= 2: t=1 lets any one neighbour unmask a client"
            )
        return v

    @field_validator("threshold_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.5 <= v <= 1.0:
            raise ValueError(
                f"secagg.threshold_fraction={v} must be in [0.5, 1]; below 0.5 a server that lies "
                "about dropouts could unmask a client"
            )
        return v

    @field_validator("neighbours")
    @classmethod
    def _neighbours(cls, v: int | None) -> int | None:
        if v is not None and v < 2:
            raise ValueError(f"secagg.neighbours={v} must be >= 2 (or None for the default)")
        return v

    @field_validator("dropout_rate")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"secagg.dropout_rate={v} must be in [0, 1)")
        return v

    @model_validator(mode="after")
    def _cross(self) -> SecAggConfig:
        if self.threshold is not None and "threshold_fraction" in self.model_fields_set:
            raise ValueError(
                "secagg.threshold and secagg.threshold_fraction are both set; set only one of them"
            )
        if (
            self.threshold is not None
            and self.neighbours is not None
            and self.threshold > self.neighbours
        ):
            raise ValueError(
                f"secagg.threshold={self.threshold} exceeds secagg.neighbours={self.neighbours}; "
                "a client only has that many share holders"
            )
        if self.max_cohort() < 2:
            raise ValueError(
                f"secagg.modulus_bits={self.modulus_bits} leaves no headroom for bits={self.bits} and "
                f"max_weight={self.max_weight}; raise modulus_bits or lower bits"
            )
        return self

    def max_cohort(self) -> int:
        """Largest cohort whose weighted sum cannot wrap mod 2^modulus_bits."""
        return ((1 << self.modulus_bits) - 1) // (self.max_weight * ((1 << self.bits) - 1))


__all__ = ["SecAggConfig"]
