"""Top-k sparsification: the largest-magnitude fraction of each tensor, as indices and values."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedlm.compression.base import Codec
from fedlm.compression.payload import DTYPES, PartSpecs, check_part, malformed
from fedlm.errors import ConfigError, UpdateRejected


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

    def part_specs(self, numel: int) -> PartSpecs:
        k = self.num_kept(numel)
        return {"i": (torch.int32, k), "v": (DTYPES[self.value_dtype], k)}

    def _encode_one(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        if x.numel() >= 2**31:
            raise UpdateRejected("too_large", f"{x.numel()} elements exceed int32 indices")
        k = self.num_kept(x.numel())
        idx = torch.sort(torch.topk(x.abs(), k, sorted=False).indices).values  # (k,) ascending
        return {"i": idx.to(torch.int32), "v": x[idx].to(DTYPES[self.value_dtype])}

    def _decode_one(self, parts: dict[str, torch.Tensor], numel: int) -> torch.Tensor:
        k = self.num_kept(numel)
        idx = check_part(parts, "i", torch.int32, k).long()
        values = check_part(parts, "v", DTYPES[self.value_dtype], k)
        # Ascending and in range => unique; one canonical encoding per sparse tensor.
        if k and (int(idx[0]) < 0 or int(idx[-1]) >= numel or bool((idx[1:] <= idx[:-1]).any())):
            raise malformed(f"top-k indices must be strictly ascending in [0, {numel})")
        out = torch.zeros(numel, dtype=torch.float32)
        out[idx] = values.float()
        return out


__all__ = ["TopKCodec"]
