"""LoRA-aware aggregation: averaging adapters so the merged update is what clients learned.

A LoRA module adds ``ΔW = s · B @ A`` to a frozen weight, with ``A`` of shape (r, in),
``B`` of shape (out, r) and scaling ``s = alpha / r``. PEFT names them
``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` (``<module>.lora_A.<adapter>.weight``
inside a live model). Averaging A and B separately is *not* averaging the updates:
``mean(B_i) mean(A_i) != mean(B_i A_i)``. The methods here, all on the clients' full local
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

Tensors that are not LoRA factors (``modules_to_save``, biases, DoRA magnitudes, and
``lora_embedding_A/B``, whose ΔW is transposed) are averaged plainly by every method.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedlm.errors import ConfigError, ProtocolError
from fedlm.stages import TensorDict

Scaling = float | Sequence[float]

# prefix.lora_A.weight or prefix.lora_A.<adapter>.weight (the form inside a PEFT model).
_LORA_NAME = re.compile(r"^(?P<prefix>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraLayout:
    """How a state's tensor names split into LoRA pairs and everything else.

    Attributes:
        pairs: module prefix -> (A name, B name).
        other: names of tensors that are not LoRA factors, averaged plainly.
    """

    pairs: dict[str, tuple[str, str]]
    other: tuple[str, ...]


@dataclass(frozen=True)
class LoraAggregate:
    """The result of LoRA-aware aggregation.

    Attributes:
        state: the new global adapter by tensor name (A, B and other tensors).
        scaling: scaling ``s`` of the returned adapter (its ΔW is ``s B A``).
        residuals: module prefix -> (out, in) float32 ΔW to add to that module's frozen
            base weight on every party (FedEx-LoRA); scaling is already included.
        metrics: flat numbers for the round log (``residual_bytes``, truncation error).
    """

    state: TensorDict
    scaling: float
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def residual_bytes(self) -> int:
        """Bytes the residuals add to the broadcast, sent as float32."""
        return sum(r.numel() * 4 for r in self.residuals.values())


# ------------------------------------------------------------------ helpers


def lora_scaling(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """PEFT's scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (Kalajdzievski 2023)."""
    if rank <= 0:
        raise ConfigError(f"LoRA rank must be > 0, got {rank}")
    return alpha / (rank**0.5 if rslora else rank)


def pair_lora_tensors(names: Iterable[str]) -> LoraLayout:
    """Group PEFT tensor names into (A, B) pairs per module; the rest go to ``other``.

    Raises:
        ProtocolError: an A without its B (or the reverse), or two adapters on one module.
    """
    found: dict[str, dict[str, str]] = {}
    other: list[str] = []
    for name in names:
        match = _LORA_NAME.match(name)
        if match is None:
            other.append(name)
            continue
        slot = found.setdefault(match["prefix"], {})
        if match["ab"] in slot:
            raise ProtocolError(
                f"module {match['prefix']!r} has two lora_{match['ab']} tensors "
                f"({slot[match['ab']]!r}, {name!r}); aggregate one adapter at a time"
            )
        slot[match["ab"]] = name
    pairs: dict[str, tuple[str, str]] = {}
    for prefix, slot in found.items():
        if set(slot) != {"A", "B"}:
            raise ProtocolError(
                f"module {prefix!r} has lora_{next(iter(slot))} but not its partner; "
                "send both LoRA factors of every module"
            )
        pairs[prefix] = (slot["A"], slot["B"])
    return LoraLayout(pairs=pairs, other=tuple(other))


def normalize_weights(weights: Sequence[float], n: int) -> list[float]:
    """Weights (e.g. example counts) as fractions summing to 1."""
    if len(weights) != n:
        raise ProtocolError(
            f"got {len(weights)} weights for {n} client states; give one per client"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ProtocolError(f"weights {list(weights)} must be >= 0 with a positive sum")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _per_client(scaling: Scaling, n: int) -> list[float]:
    if isinstance(scaling, (int, float)):
        return [float(scaling)] * n
    if len(scaling) != n:
        raise ConfigError(
            f"got {len(scaling)} scalings for {n} clients; give one per client or a float"
        )
    return [float(s) for s in scaling]


def _uniform(scaling: Scaling, method: str) -> float:
    if not isinstance(scaling, (int, float)):
        raise ConfigError(
            f"{method} needs one scaling shared by all clients, got {list(scaling)}; "
            "use method 'svd' or 'hetlora' for clients with different ranks"
        )
    return float(scaling)


def _layout(states: Sequence[Mapping[str, torch.Tensor]]) -> LoraLayout:
    if not states:
        raise ProtocolError("no client states to aggregate")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))[:3]
            raise ProtocolError(f"client state {i} has other tensors than client 0 (e.g. {diff})")
    layout = pair_lora_tensors(states[0])
    for prefix, (a_name, b_name) in layout.pairs.items():
        out_in = (states[0][b_name].shape[0], states[0][a_name].shape[-1])
        for i, state in enumerate(states):
            a, b = state[a_name], state[b_name]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise ProtocolError(
                    f"client {i} module {prefix!r}: A {tuple(a.shape)} and B {tuple(b.shape)} "
                    "are not (r, in) and (out, r)"
                )
            if (b.shape[0], a.shape[1]) != out_in:
                raise ProtocolError(
                    f"client {i} module {prefix!r} has (out, in) "
                    f"{(b.shape[0], a.shape[1])}, client 0 has {out_in}"
                )
    return layout


def _mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean in float32 (or float64 if given), cast back to the first tensor's dtype."""
    acc = sum(
        w * t.detach().to(torch.promote_types(t.dtype, torch.float32))
        for w, t in zip(weights, tensors, strict=True)
    )
    return acc.to(tensors[0].dtype)


def _average_other(
    states: Sequence[Mapping[str, torch.Tensor]], w: Sequence[float], layout: LoraLayout
) -> TensorDict:
    return {name: _mean([s[name] for s in states], w) for name in layout.other}


def _target_delta(
    states: Sequence[Mapping[str, torch.Tensor]],
    w: Sequence[float],
    s: Sequence[float],
    names: tuple[str, str],
) -> torch.Tensor:
    """Σ w_i s_i B_i A_i, shape (out, in), float64: what an exact aggregate must apply."""
    a_name, b_name = names
    return sum(
        wi * si * (st[b_name].double() @ st[a_name].double())
        for wi, si, st in zip(w, s, states, strict=True)
    )


# ------------------------------------------------------------------ methods


def aggregate_naive(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], *, scaling: float = 1.0
) -> LoraAggregate:
    """Average A and B separately (as FedIT, Zhang et al. 2024, does); inexact."""
    w = normalize_weights(weights, len(states))
    layout = _layout(states)
    s = _uniform(scaling, "naive")
    out = _average_other(states, w, layout)
    for a_name, b_name in layout.pairs.values():
        out[a_name] = _mean([st[a_name] for st in states], w)
        out[b_name] = _mean([st[b_name] for st in states], w)
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
    layout = _layout(states)
    s = _uniform(scaling, "fedex")
    naive = aggregate_naive(states, w, scaling=s)
    residuals: dict[str, torch.Tensor] = {}
    for prefix, (a_name, b_name) in layout.pairs.items():
        target = _target_delta(states, w, [s] * len(states), (a_name, b_name))
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
    layout = _layout(states)
    s = _per_client(scaling, len(states))
    s_out = (
        _uniform(scaling, "svd without out_scaling") if out_scaling is None else float(out_scaling)
    )
    out = _average_other(states, w, layout)
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
    layout = _layout(states)
    s = _uniform(scaling, "ffa")
    out = _average_other(states, w, layout)
    for prefix, (a_name, b_name) in layout.pairs.items():
        for i, st in enumerate(states[1:], start=1):
            if not torch.equal(st[a_name], states[0][a_name]):
                raise ProtocolError(
                    f"FFA-LoRA needs A frozen and shared, but client {i} changed {prefix!r}.lora_A; "
                    "freeze lora_A in local training or choose another method"
                )
        out[a_name] = states[0][a_name].detach().clone()
        out[b_name] = _mean([st[b_name] for st in states], w)
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
    layout = _layout(states)
    s = _per_client(scaling, len(states))
    s_out = (
        _uniform(scaling, "hetlora without out_scaling")
        if out_scaling is None
        else float(out_scaling)
    )
    out = _average_other(states, w, layout)
    for a_name, b_name in layout.pairs.values():
        r_max = max(st[a_name].shape[0] for st in states)
        padded = [
            pad_lora_rank(st[a_name], st[b_name] * (si / s_out), r_max)
            for st, si in zip(states, s, strict=True)
        ]
        a_bar = _mean([p[0] for p in padded], w)
        b_bar = _mean([p[1] for p in padded], w)
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


# ------------------------------------------------------------------ checking and folding


def aggregation_error(
    client_states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    applied: LoraAggregate | Mapping[str, torch.Tensor],
    *,
    scaling: Scaling = 1.0,
) -> dict[str, float]:
    """Relative error of the applied update per module.

    ``||Σ w_i s_i B_i A_i - ΔW_applied||_F / ||Σ w_i s_i B_i A_i||_F`` where
    ``ΔW_applied = s_out B̄ Ā + residual`` (residual only for FedEx-LoRA). ``applied`` is a
    ``LoraAggregate`` (its scaling and residuals are used) or a bare adapter state, whose
    scaling is then the single ``scaling``. A module whose true sum is 0 reports 0 when the
    applied update is 0 too, else infinity.
    """
    w = normalize_weights(weights, len(client_states))
    layout = _layout(client_states)
    s = _per_client(scaling, len(client_states))
    if isinstance(applied, LoraAggregate):
        state, s_out, residuals = applied.state, applied.scaling, applied.residuals
    else:
        state, s_out, residuals = (
            applied,
            _uniform(scaling, "aggregation_error on a bare state"),
            {},
        )
    errors: dict[str, float] = {}
    for prefix, names in layout.pairs.items():
        target = _target_delta(client_states, w, s, names)
        got = s_out * (state[names[1]].double() @ state[names[0]].double())
        if prefix in residuals:
            got = got + residuals[prefix].double()
        num, den = float((target - got).norm()), float(target.norm())
        errors[prefix] = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return errors


def fold_residuals(
    base: Mapping[str, torch.Tensor],
    residuals: Mapping[str, torch.Tensor],
    *,
    fan_in_fan_out: bool = False,
) -> TensorDict:
    """Frozen base weights with FedEx-LoRA residuals added; returns only the changed tensors.

    Looks up ``<prefix>.base_layer.weight`` (inside a PEFT model) or ``<prefix>.weight``.
    ``fan_in_fan_out`` is for layers storing (in, out), like GPT-2's Conv1D.
    """
    changed: TensorDict = {}
    for prefix, res in residuals.items():
        name = next(
            (n for n in (f"{prefix}.base_layer.weight", f"{prefix}.weight") if n in base), None
        )
        if name is None:
            raise ProtocolError(
                f"no base weight for LoRA module {prefix!r} (tried .base_layer.weight, .weight)"
            )
        delta = res.T if fan_in_fan_out else res
        if tuple(base[name].shape) != tuple(delta.shape):
            raise ProtocolError(
                f"residual {tuple(delta.shape)} does not fit {name!r} {tuple(base[name].shape)}"
            )
        changed[name] = (base[name].detach().float() + delta.float().to(base[name].device)).to(
            base[name].dtype
        )
    return changed
