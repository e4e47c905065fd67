"""The shared random rotation of distributed DP: a randomised Walsh-Hadamard transform.

Kairouz, Liu and Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation", Sec. 4.2, "flattening") rotate every client vector by
the same random orthogonal matrix ``U = H D / sqrt(D_pad)`` before rounding:

* ``D`` is a diagonal of independent uniform signs (Rademacher), drawn from a *public*
  per-round seed so that every client and the server build the same matrix;
* ``H`` is the ``D_pad x D_pad`` Walsh-Hadamard matrix (entries +-1, ``H H = D_pad I``),
  applied in ``O(D_pad log D_pad)`` by the fast transform; vectors are zero-padded to
  ``D_pad``, the next power of two.

After the rotation every coordinate of ``U x`` is a Rademacher sum with coefficients
``x_k / sqrt(D_pad)``, hence sub-Gaussian with variance proxy ``||x||^2 / D_pad``: the
energy of a spiky update is spread evenly, so each coordinate needs few bits and the
rounding error is small relative to the signal. ``U`` is orthogonal: norms are preserved
and the inverse is the transpose, ``x = D H y / sqrt(D_pad)``.

The signs come from the raw 64-bit output of NumPy's PCG64 bit generator seeded through
``SeedSequence``; NumPy keeps that stream stable across versions (unlike the samplers of
``Generator``), so clients on different NumPy versions still agree on the rotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlm.errors import ConfigError

Seed = int | Sequence[int]


def padded_dim(dim: int) -> int:
    """``D_pad``: the smallest power of two ``>= dim`` (``dim >= 1``)."""
    if int(dim) != dim or dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}")
    return 1 << (int(dim) - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalised fast Walsh-Hadamard transform ``H x`` along the last axis.

    Args:
        x: float array of shape ``(..., D)`` with ``D`` a power of two.

    Returns:
        float64 array of shape ``(..., D)``; applying it twice multiplies by ``D``.
    """
    y = np.array(x, dtype=np.float64, copy=True)
    d = y.shape[-1]
    if d < 1 or d & (d - 1):
        raise ConfigError(f"the Hadamard transform needs a power-of-two length, got {d}")
    lead = y.shape[:-1]
    h = 1
    while h < d:
        # Butterflies of width 2h: (a, b) -> (a + b, a - b) on blocks of h coordinates.
        blocks = y.reshape(*lead, d // (2 * h), 2, h)  # (..., D/2h, 2, h)
        a = blocks[..., 0, :].copy()
        b = blocks[..., 1, :]
        blocks[..., 0, :] += b
        np.subtract(a, b, out=blocks[..., 1, :])
        h *= 2
    return y


def rotation_signs(seed: Seed, dim: int) -> np.ndarray:
    """The diagonal ``D`` of the rotation: ``dim`` public random signs in {-1.0, +1.0}.

    Args:
        seed: the public per-round seed (an int or a sequence of ints, e.g.
            ``(experiment_seed, round)``), identical on every client and the server.
        dim: number of signs (``D_pad``).

    Returns:
        float64 array of shape ``(dim,)``.
    """
    words = (int(dim) + 63) // 64
    raw = np.random.PCG64(np.random.SeedSequence(seed)).random_raw(words)  # (words,) uint64
    bits = np.unpackbits(raw.astype("<u8").view(np.uint8), bitorder="little")[: int(dim)]
    return 1.0 - 2.0 * bits.astype(np.float64)


def rotate(x: np.ndarray, *, seed: Seed) -> np.ndarray:
    """``U x = H D x / sqrt(D_pad)`` after zero-padding ``x`` to ``D_pad``.

    Args:
        x: float array of shape ``(..., d)``.
        seed: the public rotation seed (see :func:`rotation_signs`).

    Returns:
        float64 array of shape ``(..., D_pad)`` with the same L2 norm as ``x`` (up to
        float64 rounding).
    """
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[-1]
    dp = padded_dim(d)
    padded = np.zeros((*x.shape[:-1], dp), dtype=np.float64)
    padded[..., :d] = x
    padded *= rotation_signs(seed, dp)
    return fwht(padded) / np.sqrt(dp)


def unrotate(y: np.ndarray, *, seed: Seed, dim: int) -> np.ndarray:
    """Inverse of :func:`rotate`: ``D H y / sqrt(D_pad)``, truncated to the first ``dim``.

    Args:
        y: float array of shape ``(..., D_pad)``.
        seed: the rotation seed the clients used.
        dim: ``d``, the length before padding.

    Returns:
        float64 array of shape ``(..., dim)``.
    """
    y = np.asarray(y, dtype=np.float64)
    dp = y.shape[-1]
    if dp != padded_dim(dim):
        raise ConfigError(
            f"rotated vector has length {dp} but dim={dim} pads to {padded_dim(dim)}; "
            "decode with the dimension the clients encoded"
        )
    x = fwht(y) / np.sqrt(dp)
    x *= rotation_signs(seed, dp)
    return x[..., :dim]


__all__ = ["fwht", "padded_dim", "rotate", "rotation_signs", "unrotate"]
