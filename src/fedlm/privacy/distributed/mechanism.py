"""Distributed DP over secure aggregation: encode on each client, decode the modular sum.

The client procedure of Kairouz, Liu and Steinke 2021 (arXiv:2102.06387, Algorithm 1), as
in TFF's ``DistributedDpSumFactory``, with the discrete Gaussian or (Agarwal, Kairouz and
Liu 2021) Skellam noise::

    client i (x_i: (d,) float)                       server
      clip to ||x_i||_2 <= c                            sum_i z_i mod 2^b   (SecAgg)
      rotate: U x_i, zero-padded to (D,)                centre to [-2^(b-1), 2^(b-1))
      scale by 1/gamma  (integer units)                 times gamma
      conditional randomised rounding,                  inverse rotation U^T, first d
        ||round||_2 <= Delta_2                          -> sum_i clip(x_i) + noise + rounding
      + noise share (variance sigma^2 / (n gamma^2))
      z_i = (...) mod 2^b   (uint64 in [0, 2^b))

The rotation seed is public and per round; the rounding and noise generator is the
client's secret. The decoded sum is unbiased for the sum of the clipped updates as long as
no coordinate of the integer sum leaves ``[-2^(b-1), 2^(b-1))``; see
:func:`fedlm.privacy.distributed.calibration.wraparound_probability`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.accounting import MECHANISMS
from fedlm.privacy.distributed.discrete_noise import sample_discrete_gaussian, sample_skellam
from fedlm.privacy.distributed.rotation import Seed, padded_dim, rotate, unrotate
from fedlm.privacy.distributed.rounding import (
    conditional_randomized_round,
    rounded_l1_bound,
    rounded_l2_bound,
)

MAX_BITS = 62  # int64 arithmetic needs headroom above the ring for r + noise


@dataclasses.dataclass(frozen=True)
class DistributedDpParams:
    """Public parameters of one round of distributed DP (what TFF's factory computes).

    Attributes:
        mechanism: "ddgauss" (distributed discrete Gaussian) or "skellam".
        clip: ``c``, the L2 clip norm of one client's update (update units).
        dim: ``d``, the update's length (padded to ``D``, a power of two).
        num_clients: ``n``, the number of noise shares the sum is planned for.
        gamma: granularity, update units per integer step (> 0).
        noise_stddev: ``sigma``, std of the total noise in the sum (update units); each
            client adds variance ``sigma^2 / n``. 0 disables the noise (tests only).
        bits: ``b``, the ring is ``Z_{2^b}``, 2 <= b <= 62.
        beta: conditional rounding parameter in [0, 1); TFF's default is ``exp(-0.5)``.
    """

    mechanism: str
    clip: float
    dim: int
    num_clients: int
    gamma: float
    noise_stddev: float
    bits: int
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ConfigError(
                f"mechanism must be one of {list(MECHANISMS)}, got {self.mechanism!r}"
            )
        for name in ("clip", "gamma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
        if not (math.isfinite(self.noise_stddev) and self.noise_stddev >= 0):
            raise ConfigError(
                f"noise_stddev must be a finite number >= 0, got {self.noise_stddev!r}"
            )
        for name in ("dim", "num_clients"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if int(self.bits) != self.bits or not 2 <= self.bits <= MAX_BITS:
            raise ConfigError(f"bits must be an integer in [2, {MAX_BITS}], got {self.bits!r}")
        if not (math.isfinite(self.beta) and 0.0 <= self.beta < 1.0):
            raise ConfigError(f"beta must be in [0, 1), got {self.beta!r}; TFF uses exp(-0.5)")

    @property
    def padded_dim(self) -> int:
        """``D``: ``dim`` rounded up to a power of two."""
        return padded_dim(self.dim)

    @property
    def l2_bound(self) -> float:
        """``Delta_2``: the L2 norm every rounded client vector satisfies (integer units)."""
        return rounded_l2_bound(self.clip / self.gamma, self.padded_dim, self.beta)

    @property
    def l1_bound(self) -> float:
        """``Delta_1``: the L1 sensitivity in integer units."""
        return rounded_l1_bound(self.l2_bound, self.padded_dim)

    @property
    def local_scale(self) -> float:
        """Each client's noise in integer units: the discrete Gaussian's ``s`` or the
        Skellam's standard deviation, ``sigma / (gamma sqrt(n))``."""
        return self.noise_stddev / (self.gamma * math.sqrt(self.num_clients))

    def to_dict(self) -> dict[str, Any]:
        """The fields, for logging and the round plan."""
        return dataclasses.asdict(self)


def client_encode(
    x: Any, params: DistributedDpParams, *, rotation_seed: Seed, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """One client's encoding: clip, rotate, scale, round, add its noise share, reduce.

    Args:
        x: the flat update, shape ``(d,)`` (NumPy array or CPU/GPU torch tensor).
        params: the round's public parameters.
        rotation_seed: the public per-round rotation seed (same on every client).
        rng: the client's secret generator for rounding and noise.

    Returns:
        ``(z, metrics)``: ``z`` is a uint64 array of shape ``(D,)`` with values in
        ``[0, 2^b)``, ready for SecAgg masking mod ``2^b``; ``metrics`` has the update's
        ``norm`` before clipping, ``clipped`` (1.0 or 0.0) and ``rounding_tries``.
    """
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().to("cpu").double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (params.dim,):
        raise ConfigError(
            f"update has shape {x.shape} but params.dim={params.dim}; flatten the update to "
            "(dim,) with the dimension the round was planned for"
        )
    norm = float(np.linalg.norm(x))
    if not math.isfinite(norm):
        raise ConfigError("update contains NaN or inf; fix local training before encoding")
    clipped = norm > params.clip
    if clipped:
        x = x * (params.clip / norm)
    y = rotate(x, seed=rotation_seed) / params.gamma  # (D,), integer units
    rounded, tries = conditional_randomized_round(y, bound=params.l2_bound, rng=rng)
    noise = _sample_noise(params, rng)  # (D,) int64
    z = np.mod(rounded + noise, 1 << params.bits).astype(np.uint64)
    return z, {"norm": norm, "clipped": float(clipped), "rounding_tries": float(tries)}


def modular_sum(encodings: list[np.ndarray] | np.ndarray, *, bits: int) -> np.ndarray:
    """``sum_i z_i mod 2^b`` (what SecAgg reveals), uint64 of shape ``(D,)``.

    uint64 addition wraps mod ``2^64``, a multiple of ``2^b``, so the final mask is exact.
    """
    stacked = np.asarray(encodings, dtype=np.uint64)  # (n, D)
    total = stacked.sum(axis=0, dtype=np.uint64)
    return total & np.uint64((1 << bits) - 1)


def centre(total: np.ndarray, *, bits: int) -> np.ndarray:
    """Map residues in ``[0, 2^b)`` to the signed integers in ``[-2^(b-1), 2^(b-1))``."""
    v = np.asarray(total, dtype=np.uint64).astype(np.int64)
    half = 1 << (bits - 1)
    return np.where(v >= half, v - (1 << bits), v)


def server_decode(
    total: np.ndarray, params: DistributedDpParams, *, rotation_seed: Seed
) -> np.ndarray:
    """Decode the modular sum into the noisy sum of the clipped updates.

    Args:
        total: ``sum_i z_i mod 2^b``, integer array of shape ``(D,)``.
        params: the round's public parameters.
        rotation_seed: the seed the clients rotated with.

    Returns:
        float64 array of shape ``(d,)``: ``sum_i clip(x_i) + noise + rounding error`` (the
        sum, not the mean: divide by the public denominator afterwards).
    """
    total = np.asarray(total)
    if total.shape != (params.padded_dim,):
        raise ConfigError(
            f"modular sum has shape {total.shape}, expected ({params.padded_dim},) for "
            f"dim={params.dim}"
        )
    signed = centre(total, bits=params.bits).astype(np.float64) * params.gamma  # (D,)
    return unrotate(signed, seed=rotation_seed, dim=params.dim)


def _sample_noise(params: DistributedDpParams, rng: np.random.Generator) -> np.ndarray:
    scale = params.local_scale
    if params.mechanism == "ddgauss":
        return sample_discrete_gaussian(params.padded_dim, sigma=scale, rng=rng)
    return sample_skellam(params.padded_dim, variance=scale * scale, rng=rng)


__all__ = [
    "MAX_BITS",
    "DistributedDpParams",
    "centre",
    "client_encode",
    "modular_sum",
    "server_decode",
]
