"""Fixed-point encoding of float vectors for summation modulo 2^m.

Each coordinate is clipped to [-c, c], shifted to [0, 2c] and mapped to an integer in
[0, 2^b - 1] by stochastic rounding (unbiased: E[q] equals the scaled value), as in
the distributed-DP line of work that pairs SecAgg with quantisation (e.g. Kairouz et
al. 2021, "The Distributed Discrete Gaussian Mechanism"). A client with integer weight
w contributes w * q. The sum over clients is exact as long as it stays below 2^m, which
:func:`required_modulus_bits` guarantees: 2^m > n * W * (2^b - 1) for n clients and
weights up to W.

Error bound. With step = 2c / (2^b - 1), one client's decoded value differs from its
clipped value by less than one step, so for inputs inside [-c, c] the decoded weighted
sum differs from the true weighted sum by less than ``total_weight * step`` per
coordinate (n * 2c / (2^b - 1) unweighted), times 1 + 2^-7 for float32 rounding
(``LEVEL_SLACK``); see :func:`sum_error_bound`. Inputs outside
[-c, c] add their clipping error on top.

Upload size. Masked values travel as ceil(m / 8) bytes each; the default m = 32
(b = 16 leaves 16 bits of headroom: n * W <= 65537) is exactly 1.0x fp32.
"""

from __future__ import annotations

import math

import numpy as np

from fedlm.errors import ConfigError


def step_size(*, bits: int, clip: float) -> float:
    """Width of one quantisation level, 2c / (2^b - 1), in the input's units."""
    return 2.0 * clip / float((1 << bits) - 1)


# Arithmetic slack, in levels: for b <= 16 the scaling runs in float32 (twice as fast as
# float64 over a 1M-value vector), whose rounding moves s by at most 2^-8 of a level.
LEVEL_SLACK = 2.0**-7


def quantize(
    x: np.ndarray,
    *,
    bits: int,
    clip: float,
    rng: np.random.Generator,
    dtype: np.dtype | type = np.uint64,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Clip to [-clip, clip] and stochastically round to ``bits``-bit levels.

    In fixed point with f fraction bits (f = 8 in float32 for b <= 16, so that
    (2^b - 1) 2^f < 2^24 is exact; f = 16 in float64 above): t = floor(s 2^f) for the
    scaled value s in [0, 2^b - 1], then q = (t + r) >> f with r uniform in [0, 2^f)
    from an AES-CTR stream seeded by ``rng``. q rounds s up with probability
    frac(t / 2^f), which is frac(s) to within 2^-f, so E[q] = s up to 2^-f of a level,
    and |q - s| < 1 + LEVEL_SLACK.

    The work runs in chunks of ``_CHUNK`` values, so the float scratch stays in cache
    and the levels are written straight into ``out`` (a client passes the masking
    buffer): about half the time of whole-vector passes over 1M values.

    Args:
        x: float array of shape (L,).
        bits: b, 1 <= b <= 32.
        clip: c > 0.
        rng: seeds the rounding noise (not security-relevant).
        dtype: unsigned integer type of the result (uint32 holds every b <= 32).
        out: where to write the result instead, an array of shape (L,) and ``dtype``.

    Returns:
        array of shape (L,) and ``dtype`` with values in [0, 2^b - 1] (``out`` if given).
    """
    from fedlm.privacy.secagg.crypto import prg  # imported here: crypto is the heavier module

    _check(bits=bits, clip=clip)
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty(x.shape, dtype=dtype)
    elif out.shape != x.shape or out.dtype != dtype:
        raise ConfigError(
            f"out has shape {out.shape} and dtype {out.dtype}; quantize needs {x.shape} and {dtype}"
        )
    levels = (1 << bits) - 1
    if bits <= 16:
        f, ftype, signed, word, noise = 8, np.float32, np.int32, np.dtype(np.uint32), np.dtype("<u1")
    else:
        f, ftype, signed, word, noise = 16, np.float64, np.int64, np.dtype(np.uint64), np.dtype("<u2")
    one = float(1 << f)
    scale = levels / (2.0 * clip) * one
    shift, top = ftype(clip * scale), ftype(levels * one)
    r = prg(rng.bytes(32), x.size, dtype=noise)  # (L,), uniform in [0, 2^f)
    chunk = max(1, min(_CHUNK, x.size))
    s = np.empty(chunk, dtype=ftype)  # s * 2^f for one chunk
    t = None if dtype == word else np.empty(chunk, dtype=word)
    for start in range(0, x.size, chunk):
        xs = x[start : start + chunk]
        ss, ts = s[: xs.size], (out[start : start + chunk] if t is None else t[: xs.size])
        np.multiply(xs, ftype(scale), out=ss, dtype=ftype)
        ss += shift
        np.clip(ss, ftype(0.0), top, out=ss)  # the SecAgg stage refuses NaN before masking
        np.copyto(ts.view(signed), ss, casting="unsafe")  # floor, as s >= 0
        np.add(ts, r[start : start + chunk], out=ts, casting="unsafe")  # t < 2^(b+f): no wrap
        np.right_shift(ts, word.type(f), out=ts)
        if t is not None:
            out[start : start + chunk] = ts
    return out


# Values per chunk of :func:`quantize`: 128K float32 (512 KiB) was fastest over 1M values.
_CHUNK = 1 << 17


def dequantize_sum(total: np.ndarray, *, bits: int, clip: float, total_weight: int) -> np.ndarray:
    """Decode sum_i w_i q_i into sum_i w_i x_i: total * step - clip * total_weight.

    Args:
        total: integer array of shape (L,), the exact (already reduced) weighted sum.
        total_weight: sum of the clients' weights (the number of clients if unweighted).

    Returns:
        float64 array of shape (L,).
    """
    _check(bits=bits, clip=clip)
    return np.asarray(total, dtype=np.float64) * step_size(bits=bits, clip=clip) - clip * float(
        total_weight
    )


def dequantize(q: np.ndarray, *, bits: int, clip: float) -> np.ndarray:
    """Decode one client's levels (the single-client case of :func:`dequantize_sum`)."""
    return dequantize_sum(q, bits=bits, clip=clip, total_weight=1)


def sum_error_bound(total_weight: int, *, bits: int, clip: float) -> float:
    """Per-coordinate bound on |decoded sum - true sum| for inputs inside [-clip, clip].

    total_weight * step * (1 + LEVEL_SLACK): below one step per unit of weight, plus the
    float32 slack of :func:`quantize`.
    """
    return float(total_weight) * step_size(bits=bits, clip=clip) * (1.0 + LEVEL_SLACK)


def required_modulus_bits(n: int, *, bits: int, max_weight: int = 1) -> int:
    """Smallest m with 2^m > n * max_weight * (2^b - 1), so the sum cannot wrap."""
    if n < 1 or max_weight < 1:
        raise ConfigError(f"n={n} and max_weight={max_weight} must be >= 1")
    largest = n * max_weight * ((1 << bits) - 1)
    return max(1, largest.bit_length())


def upload_expansion(modulus_bits: int) -> float:
    """Bytes per masked value relative to a 4-byte float32: ceil(m / 8) / 4."""
    return math.ceil(modulus_bits / 8) / 4.0


def _check(*, bits: int, clip: float) -> None:
    if not 1 <= bits <= 32:
        raise ConfigError(f"bits={bits} must be in [1, 32]; 16 is the usual choice")
    if not (clip > 0 and math.isfinite(clip)):
        raise ConfigError(f"clip={clip} must be a positive finite number")


__all__ = [
    "LEVEL_SLACK",
    "dequantize",
    "dequantize_sum",
    "quantize",
    "required_modulus_bits",
    "step_size",
    "sum_error_bound",
    "upload_expansion",
]
