"""The interquartile mean: per coordinate, the mean of the middle half of the updates.

A trimmed mean with the trim fixed at a quarter from each end (Yin et al. 2018's
coordinate-wise trimmed mean with beta = 1/4, the "midmean" of robust statistics). Each
coordinate's ``k = floor(n / 4)`` smallest and ``k`` largest values are dropped and the
remaining ``n - 2k`` averaged, unweighted as in the paper. It tolerates ``f <= k``
Byzantine updates per coordinate, hence its assumption ``n >= 4f + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedlm.aggregation.robust_coordinate import stack_updates, unstack
from fedlm.aggregation.robust_stages import _RobustStage
from fedlm.stages import RoundPlan, TensorDict


def interquartile_mean(updates: list[TensorDict]) -> tuple[TensorDict, dict[str, Any]]:
    """Coordinate-wise mean of the middle half of ``updates``; returns (aggregate, diagnostics).

    With ``n`` updates, ``k = n // 4`` values are dropped at each end of every coordinate.
    """
    x, _, layout = stack_updates(updates)  # (n, d) float32
    n = x.shape[0]
    k = n // 4
    middle = torch.sort(x, dim=0).values[k : n - k]  # (n - 2k, d)
    return unstack(middle.mean(dim=0), layout), {"flagged": [], "trimmed_per_side": k}


@dataclass(frozen=True)
class InterquartileMeanStage(_RobustStage):
    """Server aggregate stage: :func:`interquartile_mean` of the round's decoded updates."""

    name: ClassVar[str] = "interquartile_mean"

    def _aggregate(self, tensors: list[TensorDict], weights: list[float], plan: RoundPlan) -> tuple[TensorDict, dict]:
        return interquartile_mean(tensors)


__all__ = ["InterquartileMeanStage", "interquartile_mean"]
