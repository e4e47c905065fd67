"""LoRA factors by name: pairing A with B, scalings, weights, and the aggregation error.

A LoRA module adds ``ΔW = s · B @ A`` to a frozen weight, with ``A`` of shape (r, in),
``B`` of shape (out, r) and scaling ``s = alpha / r``. PEFT names them
``<module>.lora_A.weight`` and ``<module>.lora_B.weight`` (``<module>.lora_A.<adapter>.weight``
inside a live model). The aggregation methods (:mod:`fedlm.aggregation.lora`) and the
LoRA stage share what is here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
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


def per_client_scaling(scaling: Scaling, n: int) -> list[float]:
    if isinstance(scaling, (int, float)):
        return [float(scaling)] * n
    if len(scaling) != n:
        raise ConfigError(
            f"got {len(scaling)} scalings for {n} clients; give one per client or a float"
        )
    return [float(s) for s in scaling]


def uniform_scaling(scaling: Scaling, method: str) -> float:
    if not isinstance(scaling, (int, float)):
        raise ConfigError(
            f"{method} needs one scaling shared by all clients, got {list(scaling)}; "
            "use method 'svd' or 'hetlora' for clients with different ranks"
        )
    return float(scaling)


def layout_of(states: Sequence[Mapping[str, torch.Tensor]]) -> LoraLayout:
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


def mean_of(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean in float32 (or float64 if given), cast back to the first tensor's dtype."""
    acc = sum(
        w * t.detach().to(torch.promote_types(t.dtype, torch.float32))
        for w, t in zip(weights, tensors, strict=True)
    )
    return acc.to(tensors[0].dtype)


def average_other(
    states: Sequence[Mapping[str, torch.Tensor]], w: Sequence[float], layout: LoraLayout
) -> TensorDict:
    return {name: mean_of([s[name] for s in states], w) for name in layout.other}


def target_delta(
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
    layout = layout_of(client_states)
    s = per_client_scaling(scaling, len(client_states))
    if isinstance(applied, LoraAggregate):
        state, s_out, residuals = applied.state, applied.scaling, applied.residuals
    else:
        state, s_out, residuals = (
            applied,
            uniform_scaling(scaling, "aggregation_error on a bare state"),
            {},
        )
    errors: dict[str, float] = {}
    for prefix, names in layout.pairs.items():
        target = target_delta(client_states, w, s, names)
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


__all__ = [
    "LoraAggregate",
    "LoraLayout",
    "Scaling",
    "aggregation_error",
    "fold_residuals",
    "lora_scaling",
    "normalize_weights",
    "pair_lora_tensors",
]
