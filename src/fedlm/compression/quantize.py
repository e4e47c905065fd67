"""Stochastic uniform quantisation to int8 or int4, per tensor or per block of elements."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedlm.compression.base import Codec
from fedlm.compression.payload import PartSpecs, check_part, malformed
from fedlm.errors import ConfigError, UpdateRejected


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
        return scales[torch.arange(n) // self.block_size]  # (n,); encode only (decode: _dequantize)

    def part_specs(self, numel: int) -> PartSpecs:
        q = (torch.int8, numel) if self.bits == 8 else (torch.uint8, -(-numel // 2))
        return {"q": q} if self.fixed_scale is not None else {"q": q, "s": (torch.float32, self._num_scales(numel))}

    def _dequantize(self, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """``q * scale / levels`` per element, from int8 codes (n,) and one scale per block.

        Full blocks are a (blocks, block_size) view and the short last block a slice, so
        no per-element index or padded copy is made, whatever block_size a payload names.
        """
        step = scales / self.levels  # (num_scales,) float32
        x = q.float()  # (n,)
        n, b = x.numel(), self.block_size
        if b is None or b >= n:  # one scale (a payload may name a block_size past int64)
            return x * step
        full = n // b
        body = (x[: full * b].view(full, b) * step[:full, None]).reshape(-1)
        return torch.cat([body, x[full * b :] * step[full:]]) if n % b else body

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
            scales = check_part(parts, "s", torch.float32, self._num_scales(numel))
            if not bool((torch.isfinite(scales) & (scales >= 0)).all()):
                raise malformed("scales must be finite and non-negative")
        if self.bits == 8:
            q = check_part(parts, "q", torch.int8, numel)
        else:
            packed = check_part(parts, "q", torch.uint8, -(-numel // 2))
            codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)  # (2 ceil(n/2),)
            if numel % 2 and int(codes[-1]) != 8:
                raise malformed("int4 padding nibble is not the zero code 8")
            q = codes[:numel].to(torch.int8) - 8
        if numel and (int(q.min()) < -self.levels or int(q.max()) > self.levels):
            raise malformed(f"quantised code outside [-{self.levels}, {self.levels}]")
        return self._dequantize(q, scales)


__all__ = ["StochasticQuantCodec"]
