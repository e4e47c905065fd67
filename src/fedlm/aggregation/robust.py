"""Robust aggregation of client deltas, the distance-based rules: pure functions, no state.

Every aggregator takes the cohort's deltas (one ``TensorDict`` per client, same names and
shapes), stacks them into an ``(n, d)`` float32 matrix ``x`` (row i = client i, d = total
number of coordinates, often ~1e6), works with vectorised torch ops on that matrix, and
returns ``(aggregate, diagnostics)``:

- ``aggregate``: a ``TensorDict`` with the input's names, shapes, dtypes and device;
- ``diagnostics``: ``"flagged"`` (indices the aggregator excluded or judged outliers, for
  the round audit) plus method-specific entries. Lists of length n are per client;
  ``"flagged"`` and ``"selected"`` hold indices; the rest are scalars.

Weights are the clients' ``num_examples``. Order-statistic and distance-based rules
(median, trimmed mean, Krum, Bulyan) are unweighted, as in their papers: a weight is a
claim the attacker controls.

This module holds the rules that compare whole updates (pairwise distances, cosines):
Krum, multi-Krum, Bulyan, geometric median, FLTrust and FLAME. The coordinate-wise rules
(median, trimmed mean, norm bounding) and the stacking all rules share live in
:mod:`fedlm.aggregation.robust_coordinate` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlm.aggregation.robust_coordinate import (
    Diagnostics,
    Layout,
    _finish,
    _median,
    _median_scalar,
    _weighted_mean,
    coordinate_median,
    norm_bound,
    stack_updates,
    trimmed_mean,
    unstack,
)
from fedlm.config.robust import check_assumptions
from fedlm.errors import ProtocolError
from fedlm.stages import TensorDict


def _pairwise_sq_dist(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (n, n) via the Gram matrix: one (n, d) @ (d, n) product."""
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d2 = d2.clamp_min(0.0)  # rounding can make tiny distances negative
    d2.fill_diagonal_(0.0)
    return d2


def _krum_scores(d2: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row: sum of squared distances to its n - f - 2 nearest others.

    The neighbour count is kept at least 1 so that Bulyan's last recursive Krum calls,
    which run on fewer than 2f + 3 updates, still prefer an update that has a neighbour.
    """
    n = d2.shape[0]
    k = min(max(n - f - 2, 1), n - 1)
    if k <= 0:
        return torch.zeros(n, dtype=d2.dtype, device=d2.device)
    off = d2 + torch.diag(torch.full((n,), float("inf"), dtype=d2.dtype, device=d2.device))
    return off.sort(dim=1).values[:, :k].sum(dim=1)


def multi_krum(
    updates: Sequence[TensorDict],
    weights: Sequence[float] | None = None,
    *,
    f: int,
    m: int | None = None,
) -> tuple[TensorDict, Diagnostics]:
    """Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries").

    Score each update by the sum of squared distances to its n - f - 2 nearest
    neighbours, keep the m lowest scores (m = n - f by default) and return their mean,
    weighted by ``weights`` when given. Needs n >= 2f + 3. Ties go to the lower index.
    """
    x, w, layout = stack_updates(updates, weights)
    n = x.shape[0]
    check_assumptions("multi_krum", n, f=f, multi_krum_m=m)
    m = n - f if m is None else m
    scores = _krum_scores(_pairwise_sq_dist(x), f)
    selected = torch.argsort(scores, stable=True)[:m]
    agg = _weighted_mean(x[selected], w[selected])
    chosen = sorted(selected.tolist())
    diag = {
        "scores": scores.tolist(),
        "selected": chosen,
        "flagged": [i for i in range(n) if i not in chosen],
    }
    return _finish(x, agg, layout, diag)


def krum(updates: Sequence[TensorDict], *, f: int) -> tuple[TensorDict, Diagnostics]:
    """Krum (Blanchard et al. 2017): the single update with the lowest Krum score.

    Needs n >= 2f + 3. Every other update is flagged (Krum uses exactly one).
    """
    check_assumptions("krum", len(updates), f=f)
    return multi_krum(updates, f=f, m=1)


def bulyan(updates: Sequence[TensorDict], *, f: int) -> tuple[TensorDict, Diagnostics]:
    """Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning").

    Select theta = n - 2f updates by running Krum repeatedly (each time on the updates
    not yet selected), then in each coordinate average the beta = theta - 2f selected
    values closest to their median. Needs n >= 4f + 3. Unweighted. The 2f updates left
    out by the Krum phase are flagged.
    """
    x, _, layout = stack_updates(updates)
    n = x.shape[0]
    check_assumptions("bulyan", n, f=f)
    theta, beta = n - 2 * f, n - 4 * f
    d2 = _pairwise_sq_dist(x)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(theta):  # a loop over clients, not coordinates
        idx = torch.tensor(remaining)
        best = int(torch.argmin(_krum_scores(d2[idx][:, idx], f)))
        chosen.append(remaining.pop(best))
    sel = x[chosen]  # (theta, d)
    med = _median(sel)
    closest = (sel - med).abs().topk(beta, dim=0, largest=False).indices  # (beta, d)
    agg = sel.gather(0, closest).mean(dim=0)
    diag = {"selected": sorted(chosen), "flagged": sorted(remaining)}
    return _finish(x, agg, layout, diag)


def geometric_median(
    updates: Sequence[TensorDict],
    weights: Sequence[float] | None = None,
    *,
    f: int = 0,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 1e-6,
) -> tuple[TensorDict, Diagnostics]:
    """Weighted geometric median by smoothed Weiszfeld: RFA (Pillutla et al. 2022).

    Minimises sum_i w_i max(nu, ||z - x_i||) by iterating
    z <- sum_i b_i x_i / sum_i b_i with b_i = w_i / max(nu, ||z - x_i||), starting from
    the weighted mean; stops after ``max_iter`` iterations or when the objective changes
    by at most ``tol`` relative to its value. Breakdown point 1/2, so it assumes an
    honest majority of weight (n >= 2f + 1 for equal weights). Flags nobody: updates are
    down-weighted, not dropped; ``effective_weights`` shows by how much.
    """
    x, w, layout = stack_updates(updates, weights)
    check_assumptions("geomed", x.shape[0], f=f)
    w = w / w.sum()
    z = w @ x  # (d,)
    dist = torch.linalg.vector_norm(x - z, dim=1)  # (n,)
    objective = float((w * dist).sum())
    b = w
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        b = w / dist.clamp_min(smoothing)
        z = (b @ x) / b.sum()
        dist = torch.linalg.vector_norm(x - z, dim=1)
        new_objective = float((w * dist).sum())
        done = abs(objective - new_objective) <= tol * new_objective
        objective = new_objective
        if done:
            converged = True
            break
    diag = {
        "iterations": iterations,
        "converged": converged,
        "objective": objective,
        "effective_weights": (b / b.sum()).tolist(),
        "flagged": [],
    }
    return _finish(x, z, layout, diag)


def fltrust(
    updates: Sequence[TensorDict], root_update: TensorDict
) -> tuple[TensorDict, Diagnostics]:
    """FLTrust (Cao et al. 2021, "FLTrust: Byzantine-robust FL via Trust Bootstrapping").

    The server trains on a small clean root dataset to get ``root_update`` g0. Each
    client's trust score is TS_i = ReLU(cos(x_i, g0)); each update is rescaled to
    ||g0||; the aggregate is sum_i TS_i ||g0|| x_i / ||x_i|| divided by sum_i TS_i.
    Assumes the root data are clean and representative. Weights by trust only, as in the
    paper. A zero update has trust 0; if every trust is 0 the aggregate is zero. Updates
    with trust 0 are flagged.
    """
    x, _, layout = stack_updates(updates)
    g, _, _ = stack_updates([root_update])
    if g.shape[1] != x.shape[1] or [k for k, _, _ in layout] != list(root_update):
        raise ProtocolError(
            "fltrust root update must have the same tensor names and shapes as the client updates"
        )
    g = g[0]  # (d,)
    g_norm = torch.linalg.vector_norm(g)
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    denom = norms * g_norm
    cos = torch.where(denom > 0, (x @ g) / denom.clamp_min(1e-30), torch.zeros_like(norms))
    trust = cos.clamp_min(0.0)  # ReLU
    coef = torch.where(norms > 0, trust * g_norm / norms.clamp_min(1e-30), torch.zeros_like(norms))
    total = float(trust.sum())
    agg = (coef @ x) / total if total > 0 else torch.zeros_like(g)
    diag = {
        "trust": trust.tolist(),
        "cosine": cos.tolist(),
        "root_norm": float(g_norm),
        "flagged": [i for i in range(len(trust)) if trust[i] <= 0],
    }
    return _finish(x, agg, layout, diag)


def _majority_cluster(cos_dist: torch.Tensor) -> tuple[torch.Tensor, float]:
    """FLAME's admitted set: the first single-linkage group of n // 2 + 1 updates.

    Links pairs in order of increasing cosine distance (Kruskal's order) and stops at the
    first length at which a connected group holds a majority; every link of that same
    length still counts, so ties join together. Returns the group as a boolean mask (n,)
    and that length. This is the one cluster HDBSCAN labels with min_cluster_size
    n // 2 + 1, min_samples 1 and allow_single_cluster (FLAME's setting): no smaller group
    can be a cluster, so a minority stays out however tight it is, and updates that reach
    the majority only over a longer link are HDBSCAN's noise. At most one group can hold
    a majority, so the result does not depend on the order of the updates.
    """
    n = cos_dist.shape[0]
    need = n // 2 + 1
    if need <= 1:  # one update is its own majority
        return torch.ones(n, dtype=torch.bool, device=cos_dist.device), 0.0
    parent = list(range(n))
    size = [1] * n

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees shallow
            i = parent[i]
        return i

    rows, cols = torch.triu_indices(n, n, offset=1).tolist()
    lengths = cos_dist[rows, cols].tolist()  # upper triangle: rounding can break symmetry
    level: float | None = None
    for k in sorted(range(len(lengths)), key=lengths.__getitem__):
        if level is not None and lengths[k] > level:
            break
        a, b = root(rows[k]), root(cols[k])
        if a != b:
            parent[b] = a
            size[a] += size[b]
            if level is None and size[a] >= need:
                level = lengths[k]
    # Every update is linked by the longest pair, so some group holds a majority by now.
    winner = next(i for i in range(n) if root(i) == i and size[i] >= need)
    keep = torch.tensor([root(i) == winner for i in range(n)], device=cos_dist.device)
    return keep, float(level if level is not None else 0.0)


def flame(
    updates: Sequence[TensorDict],
    weights: Sequence[float] | None = None,
    *,
    f: int = 0,
    noise_lambda: float = 0.001,
    generator: torch.Generator | None = None,
) -> tuple[TensorDict, Diagnostics]:
    """FLAME (Nguyen et al. 2022, "FLAME: Taming Backdoors in Federated Learning").

    1. Filter: cluster the pairwise cosine distances of the updates as FLAME's HDBSCAN
       does (min cluster size n // 2 + 1, min samples 1) and keep that one cluster: the
       first group that single linkage makes a majority (see ``_majority_cluster``; no
       hdbscan dependency). A minority group is never kept, even a tight one; an update
       that joins the majority only over a longer link is dropped. Zero updates count as
       cosine distance 1 from everything.
    2. Clip: S = median L2 norm of all n updates; kept updates are scaled by
       min(1, S / ||x_i||).
    3. Average the kept updates (weighted by ``weights`` when given) and add Gaussian
       noise with std ``noise_lambda * S`` to every coordinate, drawn from ``generator``.

    Assumes an honest majority whose updates point in similar directions (n >= 2f + 1);
    an attacker parallel to the honest updates is not filtered, only clipped.
    Filtered-out updates are flagged. ``link_threshold`` is the cosine distance at which
    the kept cluster formed; ``cosine_to_cluster`` is each update's distance to the
    nearest other kept update, so a flagged update shows how far outside it was.
    """
    x, w, layout = stack_updates(updates, weights)
    n = x.shape[0]
    check_assumptions("flame", n, f=f)
    norms = torch.linalg.vector_norm(x, dim=1)  # (n,)
    unit = x / norms.clamp_min(1e-30)[:, None]  # zero rows stay zero
    cos_dist = (1.0 - unit @ unit.T).clamp(0.0, 2.0)  # (n, n)
    cos_dist.fill_diagonal_(0.0)
    keep, level = _majority_cluster(cos_dist)
    to_kept = cos_dist.masked_fill(~keep[None, :], float("inf"))
    to_kept.fill_diagonal_(float("inf"))
    nearest_kept = to_kept.min(dim=1).values  # inf only when a lone update is kept
    bound = _median_scalar(norms)
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-30), torch.ones_like(norms))
    agg = _weighted_mean((x * scale[:, None])[keep], w[keep])
    if noise_lambda > 0:
        noise = torch.randn(agg.shape, generator=generator, dtype=torch.float32)
        agg = agg + noise_lambda * bound * noise.to(agg.device)
    diag = {
        "link_threshold": level,
        "cosine_to_cluster": [v if v != float("inf") else 0.0 for v in nearest_kept.tolist()],
        "clip_bound": bound,
        "noise_std": noise_lambda * bound,
        "flagged": [i for i in range(n) if not keep[i]],
    }
    return _finish(x, agg, layout, diag)


__all__ = [
    "Diagnostics",
    "Layout",
    "bulyan",
    "coordinate_median",
    "flame",
    "fltrust",
    "geometric_median",
    "krum",
    "multi_krum",
    "norm_bound",
    "stack_updates",
    "trimmed_mean",
    "unstack",
]
