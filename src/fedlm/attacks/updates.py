"""Update-space attacks as pure functions on a delta (``local - global``, by tensor name).

Each function returns new tensors (inputs are never modified) in the input's dtype and
device. The formulas, with ``delta`` the attacker's honest (or backdoored) update:

* model replacement (Bagdasaryan et al. 2020): ``gamma * delta`` with ``gamma = n / eta``
  (``n`` clients averaged, server learning rate ``eta``), so that after the server's
  ``G + eta / n * sum_i delta_i`` the global model is (about) the attacker's model;
* sign flip (Damaskinos et al. 2018; Allen-Zhu et al. 2021): ``-s * delta``;
* Gaussian (Blanchard et al. 2017, "Krum"): ``N(0, sigma^2)`` instead of, or added to, ``delta``;
* large norm: ``delta * r / ||delta||_2`` (global L2 over all tensors) — the attack that
  norm bounding (Sun et al. 2019, "Can You Really Backdoor FL?") stops;
* NaN: a share of each tensor's entries set to NaN — what update validation must reject;
* collusion: every colluder sends the mean of the colluders' deltas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedlm.errors import ConfigError
from fedlm.stages import TensorDict


def replacement_boost(cohort_size: int, server_lr: float) -> float:
    """``gamma = n / eta``, the model-replacement boost (Bagdasaryan et al. 2020, Eq. 3).

    Exact for an unweighted mean of ``n`` updates; with example-count weights the
    attacker's share is ``n_i / sum_j n_j`` instead of ``1 / n``, so pass an explicit boost.
    """
    if cohort_size < 1:
        raise ConfigError(f"cohort size must be >= 1 for model replacement, got {cohort_size}")
    if not server_lr > 0:
        raise ConfigError(f"server_lr must be > 0 for model replacement, got {server_lr!r}")
    return cohort_size / float(server_lr)


def scale(tensors: TensorDict, factor: float) -> TensorDict:
    """``factor * delta`` for every tensor (model replacement with ``factor = gamma``)."""
    if not math.isfinite(factor):
        raise ConfigError(f"scale factor must be finite, got {factor!r}")
    return {k: t * factor for k, t in tensors.items()}


def sign_flip(tensors: TensorDict, s: float = 1.0) -> TensorDict:
    """``-s * delta``: the update points uphill, ``s`` times as far."""
    return scale(tensors, -float(s))


def gaussian(
    tensors: TensorDict, std: float, *, generator: torch.Generator, mode: str = "replace"
) -> TensorDict:
    """``N(0, std^2)`` per coordinate ("replace") or ``delta + N(0, std^2)`` ("add").

    Noise is drawn in float32 on the CPU in sorted-name order, so the same generator state
    gives the same noise regardless of dict order or device; then cast to each tensor's
    dtype and device.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise std must be a finite number >= 0, got {std!r}")
    if mode not in ("replace", "add"):
        raise ConfigError(f"gaussian attack mode must be 'replace' or 'add', got {mode!r}")
    noise = {k: torch.randn(tensors[k].shape, generator=generator) * std for k in sorted(tensors)}
    out: TensorDict = {}
    for k, t in tensors.items():
        n = noise[k].to(device=t.device)
        total = n if mode == "replace" else t.to(torch.float32) + n
        out[k] = total.to(t.dtype)
    return out


def global_norm(tensors: TensorDict) -> float:
    """L2 norm of all tensors concatenated (float64 accumulation)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def scale_to_norm(tensors: TensorDict, norm: float) -> TensorDict:
    """``delta * norm / ||delta||_2`` (global L2), so the update's norm becomes ``norm``.

    A zero delta has no direction; the all-ones direction is used then, so the attack
    still sends an update of the requested norm.
    """
    if not (math.isfinite(norm) and norm > 0):
        raise ConfigError(f"large_norm target norm must be finite and > 0, got {norm!r}")
    current = global_norm(tensors)
    if current == 0.0:
        tensors = {k: torch.ones_like(t) for k, t in tensors.items()}
        current = global_norm(tensors)
    if current == 0.0:  # only empty tensors: nothing to scale
        return dict(tensors)
    return scale(tensors, norm / current)


def insert_nan(tensors: TensorDict, fraction: float, *, generator: torch.Generator) -> TensorDict:
    """Set ``ceil(fraction * numel)`` entries of each tensor to NaN (positions drawn seeded).

    At least one entry per non-empty tensor becomes NaN. Positions are drawn in sorted-name
    order on the CPU, so they do not depend on dict order or device.

    Raises:
        ConfigError: a fraction outside (0, 1], or a non-floating tensor (NaN needs floats).
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"nan fraction must be in (0, 1], got {fraction!r}")
    positions: dict[str, torch.Tensor] = {}
    for k in sorted(tensors):
        t = tensors[k]
        if not t.is_floating_point():
            raise ConfigError(
                f"cannot insert NaN into tensor {k!r} of dtype {t.dtype}; it is not floating"
            )
        count = min(t.numel(), math.ceil(fraction * t.numel() - 1e-9))
        positions[k] = torch.randperm(t.numel(), generator=generator)[:count]
    out: TensorDict = {}
    for k, t in tensors.items():
        flat = t.detach().clone().reshape(-1)
        flat[positions[k].to(flat.device)] = float("nan")
        out[k] = flat.reshape(t.shape)
    return out


def collude(deltas: Sequence[TensorDict]) -> TensorDict:
    """The one update colluding attackers all send: the mean of their deltas.

    Averaged in float32 and cast back to each tensor's dtype.
    """
    if not deltas:
        raise ConfigError("collude needs at least one attacker's delta")
    keys = set(deltas[0])
    for i, d in enumerate(deltas[1:], start=1):
        if set(d) != keys:
            raise ConfigError(
                f"colluding deltas must have the same tensor names; delta {i} differs in "
                f"{sorted(keys ^ set(d))}"
            )
    out: TensorDict = {}
    for k, t in deltas[0].items():
        total = torch.stack([d[k].to(torch.float32) for d in deltas]).mean(dim=0)
        out[k] = total.to(t.dtype)
    return out
