"""LoRA-aware aggregation: averaging adapters so the merged update is what clients learned.

A LoRA module adds ``ΔW = s · B @ A`` to a frozen weight, with ``A`` of shape (r, in),
``B`` of shape (out, r) and scaling ``s = alpha / r``. PEFT names them
``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` (``<module>.lora_A.<adapter>.weight``
inside a live model). Averaging A and B separately is *not* averaging the updates:
``mean_of(B_i) mean_of(A_i) != mean_of(B_i A_i)``. The methods here, all on the clients' full local
adapters (not deltas) with aggregation weights ``w_i`` (normalised to sum to 1):

- ``naive``: average A and B separately (FedIT; inexact).
- ``fedex``: FedEx-LoRA (Singhal et al. 2024): naive A, B plus, per module, the residual
  ``s (Σ w_i B_i A_i - B̄ Ā)`` of shape (out, in), folded into the frozen base weight on
  every party. Exact; costs ``out·in`` fp32 numbers per module downstream.
- ``svd``: stacking (FLoRA, Wang et al. 2024) gives the exact sum as an adapter of rank
  ``Σ r_i``; its SVD truncated to rank r (FlexLoRA, Bai et al. 2024) gives a rank-r adapter.
  Exact when the sum has rank <= r. Handles mixed client ranks.
- ``ffa``: FFA-LoRA (Sun et al. 2024): A is frozen and shared, only B is averaged. Exact.
- ``hetlora``: HetLoRA (Cho et al. 2024): zero-pad every client to the largest rank,
  average, then truncate or prune to the target rank (inexact, like naive).

Naming, pairing and the error measure live in :mod:`fedlm.aggregation.lora_layout`.
Tensors that are not LoRA factors (``modules_to_save``, biases, DoRA magnitudes, and
``lora_embedding_A/B``, whose ΔW is transposed) are averaged plainly by every method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fedlm.aggregation.lora_layout import (
    LoraAggregate,
    LoraLayout,
    Scaling,
    aggregation_error,
    average_other,
    fold_residuals,
    layout_of,
    lora_scaling,
    mean_of,
    normalize_weights,
    pair_lora_tensors,
    per_client_scaling,
    target_delta,
    uniform_scaling,
)
from fedlm.errors import ConfigError, ProtocolError


def aggregate_naive(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], *, scaling: float = 1.0
) -> LoraAggregate:
    """Average A and B separately (as FedIT, Zhang et al. 2024, does); inexact."""
    w = normalize_weights(weights, len(states))
    layout = layout_of(states)
    s = uniform_scaling(scaling, "naive")
    out = average_other(states, w, layout)
    for a_name, b_name in layout.pairs.values():
        out[a_name] = mean_of([st[a_name] for st in states], w)
        out[b_name] = mean_of([st[b_name] for st in states], w)
    return LoraAggregate(state=out, scaling=s)


def aggregate_fedex(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], *, scaling: float = 1.0
) -> LoraAggregate:
    """FedEx-LoRA (Singhal et al. 2024): naive A, B plus the exact residual per module.

    The residual ``s (Σ w_i B_i A_i - B̄ Ā)`` (out, in) is added to the frozen base weight
    on every party, so ``base + s B̄ Ā + residual`` equals ``base + Σ w_i s B_i A_i``.
    Its cost, ``metrics["residual_bytes"]``, is out·in·4 bytes per module.
    """
    w = normalize_weights(weights, len(states))
    layout = layout_of(states)
    s = uniform_scaling(scaling, "fedex")
    naive = aggregate_naive(states, w, scaling=s)
    residuals: dict[str, torch.Tensor] = {}
    for prefix, (a_name, b_name) in layout.pairs.items():
        target = target_delta(states, w, [s] * len(states), (a_name, b_name))
        # Against the averages as sent (already cast to the adapter dtype), so the residual
        # also absorbs that rounding.
        applied = s * (naive.state[b_name].double() @ naive.state[a_name].double())
        residuals[prefix] = (target - applied).float()
    nbytes = sum(r.numel() * 4 for r in residuals.values())
    return LoraAggregate(
        state=naive.state, scaling=s, residuals=residuals, metrics={"residual_bytes": float(nbytes)}
    )


def stack_lora(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weights: Sequence[float],
    *,
    scalings: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLoRA stacking (Wang et al. 2024): one adapter of rank Σ r_i whose B A is exact.

    Args:
        factors: per client (A_i (r_i, in), B_i (out, r_i)).
        weights: normalised weights w_i.
        scalings: per-client scaling s_i.

    Returns:
        (A (Σr, in), B (out, Σr)) in float64 with ``B @ A = Σ w_i s_i B_i A_i``; the
        weight and scaling ride on B's blocks.
    """
    a = torch.cat([f[0].double() for f in factors], dim=0)
    b = torch.cat(
        [wi * si * f[1].double() for f, wi, si in zip(factors, weights, scalings, strict=True)],
        dim=1,
    )
    return a, b


def svd_reproject(
    a: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` adapter for ``B @ A`` (FlexLoRA, Bai et al. 2024), by truncated SVD.

    ``B A = U S V^T`` is split symmetrically, ``B = U_r S_r^(1/2)`` and ``A = S_r^(1/2) V_r^T``,
    so the two factors have equal norms and neither starts the next round near zero.
    The SVD runs on a (k, k) core after QR of both factors (k = current rank), never on the
    (out, in) product. If ``B A`` has rank below ``rank``, trailing components are zero.

    Returns:
        (A (rank, in), B (out, rank), discarded) in a's dtype, where ``discarded`` is
        ``||B A - B_r A_r||_F / ||B A||_F`` (0 when nothing was cut).
    """
    if rank <= 0:
        raise ConfigError(f"target rank must be > 0, got {rank}")
    q_b, r_b = torch.linalg.qr(b.double())  # (out, k'), (k', k)
    q_a, r_a = torch.linalg.qr(a.double().T)  # (in, k''), (k'', k)
    u, sv, vh = torch.linalg.svd(r_b @ r_a.T)  # core (k', k'')
    keep = min(rank, sv.numel())
    root = sv[:keep].sqrt()
    new_b = torch.zeros(b.shape[0], rank, dtype=torch.float64, device=b.device)
    new_a = torch.zeros(rank, a.shape[1], dtype=torch.float64, device=a.device)
    new_b[:, :keep] = (q_b @ u[:, :keep]) * root  # (out, keep)
    new_a[:keep] = root[:, None] * (vh[:keep] @ q_a.T)  # (keep, in)
    total = float(sv.pow(2).sum())
    discarded = (float(sv[keep:].pow(2).sum()) / total) ** 0.5 if total > 0 else 0.0
    return new_a.to(a.dtype), new_b.to(a.dtype), discarded


def aggregate_svd(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    rank: int,
    scaling: Scaling = 1.0,
    out_scaling: float | None = None,
) -> LoraAggregate:
    """Exact sum by stacking (FLoRA), re-projected to rank ``rank`` by SVD (FlexLoRA).

    Clients may have different ranks; pass their scalings (``alpha / r_i``) per client and
    the returned adapter's ``out_scaling`` (default: the single ``scaling``).
    """
    w = normalize_weights(weights, len(states))
    layout = layout_of(states)
    s = per_client_scaling(scaling, len(states))
    s_out = (
        uniform_scaling(scaling, "svd without out_scaling") if out_scaling is None else float(out_scaling)
    )
    out = average_other(states, w, layout)
    worst = 0.0
    for a_name, b_name in layout.pairs.values():
        a, b = stack_lora([(st[a_name], st[b_name]) for st in states], w, scalings=s)
        new_a, new_b, discarded = svd_reproject(a, b / s_out, rank)
        dtype = states[0][a_name].dtype
        out[a_name], out[b_name] = new_a.to(dtype), new_b.to(dtype)
        worst = max(worst, discarded)
    return LoraAggregate(state=out, scaling=s_out, metrics={"max_truncation_error": worst})


def aggregate_ffa(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], *, scaling: float = 1.0
) -> LoraAggregate:
    """FFA-LoRA (Sun et al. 2024): A frozen and identical everywhere, only B averaged; exact.

    Raises:
        ProtocolError: a client's A differs from client 0's (A was not frozen).
    """
    w = normalize_weights(weights, len(states))
    layout = layout_of(states)
    s = uniform_scaling(scaling, "ffa")
    out = average_other(states, w, layout)
    for prefix, (a_name, b_name) in layout.pairs.items():
        for i, st in enumerate(states[1:], start=1):
            if not torch.equal(st[a_name], states[0][a_name]):
                raise ProtocolError(
                    f"FFA-LoRA needs A frozen and shared, but client {i} changed {prefix!r}.lora_A; "
                    "freeze lora_A in local training or choose another method"
                )
        out[a_name] = states[0][a_name].detach().clone()
        out[b_name] = mean_of([st[b_name] for st in states], w)
    return LoraAggregate(state=out, scaling=s)


def pad_lora_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad A (r, in) -> (rank, in) and B (out, r) -> (out, rank); ``B A`` is unchanged."""
    r = a.shape[0]
    if rank < r:
        raise ConfigError(f"cannot pad rank {r} down to {rank}; use truncate_lora_rank")
    pad_a = torch.zeros(rank - r, a.shape[1], dtype=a.dtype, device=a.device)
    pad_b = torch.zeros(b.shape[0], rank - r, dtype=b.dtype, device=b.device)
    return torch.cat([a, pad_a], dim=0), torch.cat([b, pad_b], dim=1)


def truncate_lora_rank(
    a: torch.Tensor, b: torch.Tensor, rank: int, *, by: str = "index"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut an adapter to ``rank`` components (HetLoRA, Cho et al. 2024).

    Args:
        a: (r, in). b: (out, r).
        rank: components to keep; a larger rank zero-pads instead.
        by: "index" keeps the first ``rank`` components (HetLoRA's truncation, which
            matches zero-padding); "norm" keeps those with the largest
            ``||B[:, j]|| ||A[j, :]||`` (rank pruning), in their original order.
    """
    if by not in ("index", "norm"):
        raise ConfigError(f"truncate by={by!r} is unknown; choose 'index' or 'norm'")
    if rank >= a.shape[0]:
        return pad_lora_rank(a, b, rank)
    if by == "index":
        return a[:rank].clone(), b[:, :rank].clone()
    importance = b.float().norm(dim=0) * a.float().norm(dim=1)  # (r,): ||B[:, j]|| ||A[j, :]||
    keep = torch.topk(importance, rank).indices.sort().values
    return a[keep].clone(), b[:, keep].clone()


def aggregate_hetlora(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    rank: int,
    scaling: Scaling = 1.0,
    out_scaling: float | None = None,
    prune: str = "index",
) -> LoraAggregate:
    """HetLoRA (Cho et al. 2024): zero-pad to the largest rank, average, cut to ``rank``.

    Each client's scaling is folded into its B first (``B_i s_i / s_out``) so that padding
    preserves every ``s_i B_i A_i``; the average itself is inexact, as in the naive method.
    """
    w = normalize_weights(weights, len(states))
    layout = layout_of(states)
    s = per_client_scaling(scaling, len(states))
    s_out = (
        uniform_scaling(scaling, "hetlora without out_scaling")
        if out_scaling is None
        else float(out_scaling)
    )
    out = average_other(states, w, layout)
    for a_name, b_name in layout.pairs.values():
        r_max = max(st[a_name].shape[0] for st in states)
        padded = [
            pad_lora_rank(st[a_name], st[b_name] * (si / s_out), r_max)
            for st, si in zip(states, s, strict=True)
        ]
        a_bar = mean_of([p[0] for p in padded], w)
        b_bar = mean_of([p[1] for p in padded], w)
        out[a_name], out[b_name] = truncate_lora_rank(a_bar, b_bar, rank, by=prune)
    return LoraAggregate(state=out, scaling=s_out)


LORA_METHODS: dict[str, Callable[..., LoraAggregate]] = {
    "naive": aggregate_naive,
    "fedex": aggregate_fedex,
    "svd": aggregate_svd,
    "ffa": aggregate_ffa,
    "hetlora": aggregate_hetlora,
}


def aggregate_lora(
    method: str,
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    **kwargs: object,
) -> LoraAggregate:
    """Dispatch to one of ``LORA_METHODS`` by name; keyword arguments go to that method."""
    if method not in LORA_METHODS:
        raise ConfigError(
            f"unknown LoRA aggregation {method!r}; choose one of {sorted(LORA_METHODS)}"
        )
    return LORA_METHODS[method](states, weights, **kwargs)


__all__ = [
    "LORA_METHODS",
    "LoraAggregate",
    "LoraLayout",
    "aggregate_fedex",
    "aggregate_ffa",
    "aggregate_hetlora",
    "aggregate_lora",
    "aggregate_naive",
    "aggregate_svd",
    "aggregation_error",
    "fold_residuals",
    "lora_scaling",
    "normalize_weights",
    "pad_lora_rank",
    "pair_lora_tensors",
    "stack_lora",
    "svd_reproject",
    "truncate_lora_rank",
]
