"""Coordinate-wise robust aggregation, and the stacking every robust rule shares.

:func:`stack_updates` turns the cohort's deltas into the ``(n, d)`` float32 matrix ``x`` of
:mod:`fedlm.aggregation.robust` (row i = client i, d = total number of coordinates) and
:func:`unstack` turns a ``(d,)`` aggregate back into named tensors; that module states the
``(aggregate, diagnostics)`` contract and holds the distance-based rules, built on the
helpers here.

The rules here look at one coordinate (a column of ``x``) or one update's L2 norm at a
time, never at distances between updates: coordinate-wise median and trimmed mean (Yin et
al. 2018), unweighted as in the paper, and norm bounding (Sun et al. 2019), a weighted mean
of the bounded deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedlm.config.robust import check_assumptions, trim_count
from fedlm.errors import DataError, ProtocolError
from fedlm.stages import TensorDict

Diagnostics = dict[str, Any]
# (name, shape, dtype) per tensor, in the order of the first update.
Layout = tuple[tuple[str, torch.Size, torch.dtype], ...]


def stack_updates(
    updates: Sequence[TensorDict], weights: Sequence[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor, Layout]:
    """Flatten n deltas into ``x`` (n, d) float32 and weights (n,) float32.

    Raises:
        ProtocolError: an update's names or shapes differ from the first update's.
        DataError: weights are negative, non-finite, all zero or of the wrong length.
    """
    if not updates:
        raise DataError("robust aggregation got no updates; the round needs at least one")
    first = updates[0]
    layout: Layout = tuple((k, v.shape, v.dtype) for k, v in first.items())
    rows = []
    for i, upd in enumerate(updates):
        if list(upd) != [k for k, _, _ in layout]:
            raise ProtocolError(
                f"update {i} has tensors {sorted(upd)} but update 0 has {sorted(first)}; "
                "all clients must send the same parameter names"
            )
        for k, shape, _ in layout:
            if upd[k].shape != shape:
                raise ProtocolError(
                    f"update {i} tensor {k!r} has shape {tuple(upd[k].shape)}, "
                    f"expected {tuple(shape)}"
                )
        rows.append(torch.cat([upd[k].detach().reshape(-1).float() for k, _, _ in layout]))
    x = torch.stack(rows)  # (n, d)
    n = x.shape[0]
    if weights is None:
        w = torch.ones(n, dtype=torch.float32, device=x.device)
    else:
        w = torch.as_tensor(list(weights), dtype=torch.float32, device=x.device)
        if (
            w.shape != (n,)
            or not bool(torch.isfinite(w).all())
            or bool((w < 0).any())
            or float(w.sum()) <= 0
        ):
            raise DataError(
                f"weights must be {n} finite non-negative numbers with a positive sum, "
                f"got {list(weights)}"
            )
    return x, w, layout


def unstack(vector: torch.Tensor, layout: Layout) -> TensorDict:
    """Split a flat (d,) vector back into named tensors with the layout's shapes and dtypes."""
    out: TensorDict = {}
    start = 0
    for name, shape, dtype in layout:
        size = shape.numel()
        out[name] = vector[start : start + size].reshape(shape).to(dtype)
        start += size
    return out


def _median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of (n, d) -> (d,); the mean of the two middle values for even n."""
    n = x.shape[0]
    values = x.sort(dim=0).values
    if n % 2:
        return values[n // 2]
    return 0.5 * (values[n // 2 - 1] + values[n // 2])


def _median_scalar(v: torch.Tensor) -> float:
    return float(_median(v.reshape(-1, 1))[0])


def _weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of x (k, d) weighted by w (k,); plain mean if the weights sum to 0."""
    total = w.sum()
    if float(total) <= 0:
        return x.mean(dim=0)
    return (w @ x) / total


def _finish(
    x: torch.Tensor, agg: torch.Tensor, layout: Layout, diag: Diagnostics
) -> tuple[TensorDict, Diagnostics]:
    """Attach each client's L2 distance to the aggregate and unflatten."""
    diag.setdefault("flagged", [])
    diag["distance_to_aggregate"] = torch.linalg.vector_norm(x - agg, dim=1).tolist()
    return unstack(agg, layout), diag


def coordinate_median(
    updates: Sequence[TensorDict], *, f: int = 0
) -> tuple[TensorDict, Diagnostics]:
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning").

    Assumes an honest majority (n >= 2f + 1); each coordinate is robust on its own, so
    the result need not equal any single update. Unweighted. Flags nobody (no update is
    excluded as a whole); see ``distance_to_aggregate``.
    """
    x, _, layout = stack_updates(updates)
    check_assumptions("median", x.shape[0], f=f)
    return _finish(x, _median(x), layout, {"flagged": []})


def trimmed_mean(
    updates: Sequence[TensorDict], *, trim_fraction: float, f: int = 0
) -> tuple[TensorDict, Diagnostics]:
    """Coordinate-wise trimmed mean (Yin et al. 2018).

    In each coordinate, drop the k = floor(beta n) largest and k smallest values and
    average the rest. Needs n > 2k and f <= k. Unweighted. Diagnostics give, per client,
    the fraction of coordinates in which its value lies strictly outside the kept range;
    clients outside in more than half the coordinates are flagged (an honest client is
    outside in about 2k/n of them).
    """
    x, _, layout = stack_updates(updates)
    n = x.shape[0]
    check_assumptions("trimmed_mean", n, f=f, trim_fraction=trim_fraction)
    k = trim_count(n, trim_fraction)
    values = x.sort(dim=0).values  # (n, d)
    agg = values[k : n - k].mean(dim=0)
    # A value counts as trimmed only if it lies strictly outside the kept range, so ties
    # (identical honest updates) are never blamed on whichever client sorted last.
    outside = (x < values[k]) | (x > values[n - k - 1])  # (n, d)
    frac = outside.float().mean(dim=1)
    diag = {"trimmed_fraction": frac.tolist(), "flagged": [i for i in range(n) if frac[i] > 0.5]}
    return _finish(x, agg, layout, diag)


def norm_bound(
    updates: Sequence[TensorDict],
    weights: Sequence[float] | None = None,
    *,
    bound: float | None = None,
    clip: bool = True,
) -> tuple[TensorDict, Diagnostics]:
    """Norm bounding then weighted mean (Sun et al. 2019, "Can You Really Backdoor FL?").

    Each delta is scaled by min(1, M / ||x_i||), where M is ``bound`` or, when None, the
    median L2 norm of the cohort, then the weighted mean is taken. Assumes a backdoor
    needs a large update to survive averaging. With ``clip=False`` (clients already
    clipped to ``bound``) nothing is scaled; updates whose norm exceeds the bound by more
    than 1e-4 relative are flagged as clients that skipped their clip.
    """
    x, w, layout = stack_updates(updates, weights)
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    if bound is not None and bound <= 0:
        raise DataError(f"norm bound must be positive, got {bound}; set robust.norm_bound > 0")
    m = _median_scalar(norms) if bound is None else float(bound)
    over = norms > m * (1 + 1e-4)
    if clip:
        scale = torch.where(norms > m, m / norms.clamp_min(1e-30), torch.ones_like(norms))
        agg = _weighted_mean(x * scale[:, None], w)
        flagged: list[int] = []
    else:
        agg = _weighted_mean(x, w)
        flagged = [i for i in range(len(norms)) if over[i]]
    diag = {
        "bound": m,
        "norms": norms.tolist(),
        "clipped": [bool(v) for v in (norms > m)] if clip else [False] * len(norms),
        "flagged": flagged,
    }
    return _finish(x, agg, layout, diag)


__all__ = [
    "Diagnostics",
    "Layout",
    "coordinate_median",
    "norm_bound",
    "stack_updates",
    "trimmed_mean",
    "unstack",
]
