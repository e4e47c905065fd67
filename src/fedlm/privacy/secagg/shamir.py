"""Shamir secret sharing of byte strings over the prime field GF(2^127 - 1).

Shamir (1979), "How to share a secret": a secret s is the constant term of a random
polynomial f of degree t - 1; share j is (x_j, f(x_j)). Any t shares determine f and
hence s = f(0) by Lagrange interpolation; any t - 1 shares are consistent with every
possible secret, so they reveal nothing.

A 32-byte secret (an X25519 private key or a mask seed) does not fit in one element of
GF(2^127 - 1), so it is cut into chunks of 15 bytes (120 bits < 127 bits); each chunk is
shared with its own independent polynomial at the same x. A share of a 32-byte secret
is therefore x plus three field elements (4 + 3 * 16 = 52 bytes on the wire).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedlm.privacy.secagg.errors import SecAggError

PRIME = (1 << 127) - 1  # Mersenne prime; field elements travel as 16 big-endian bytes
CHUNK_BYTES = 15  # 120-bit chunks are always < PRIME, so encoding is injective
_ELEMENT_BYTES = 16


@dataclass(frozen=True)
class Share:
    """One share: the evaluation point ``x`` (1 <= x < PRIME) and one value per chunk."""

    x: int
    ys: tuple[int, ...]

    def to_bytes(self) -> bytes:
        """``x`` as 4 bytes, then each chunk value as 16 big-endian bytes."""
        if not 0 < self.x < 1 << 32:
            raise SecAggError("wrong_size", f"share x={self.x} does not fit in 4 bytes")
        return self.x.to_bytes(4, "big") + b"".join(
            y.to_bytes(_ELEMENT_BYTES, "big") for y in self.ys
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, secret_len: int) -> Share:
        """Parse a share of a ``secret_len``-byte secret; raises ``wrong_size`` otherwise."""
        expected = 4 + _ELEMENT_BYTES * n_chunks(secret_len)
        if len(data) != expected:
            raise SecAggError("wrong_size", f"share is {len(data)} bytes, expected {expected}")
        x = int.from_bytes(data[:4], "big")
        ys = tuple(
            int.from_bytes(data[i : i + _ELEMENT_BYTES], "big")
            for i in range(4, expected, _ELEMENT_BYTES)
        )
        if x == 0 or any(y >= PRIME for y in ys):
            raise SecAggError("malformed", "share holds x=0 or a value outside the field")
        return cls(x=x, ys=ys)


def n_chunks(secret_len: int) -> int:
    """Number of field elements a ``secret_len``-byte secret is cut into."""
    return max(1, -(-secret_len // CHUNK_BYTES))


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the returned shares recover it.

    Args:
        secret: the bytes to share (any length; 32 in SecAgg).
        threshold: t, the number of shares needed; 1 <= t <= len(xs).
        xs: distinct non-zero evaluation points, one per share holder.

    Returns:
        One :class:`Share` per entry of ``xs``, in the same order.
    """
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise SecAggError(
            "bad_params", f"threshold={threshold} must be in [1, {len(xs)}] (number of shares)"
        )
    chunks = [
        int.from_bytes(secret[i : i + CHUNK_BYTES], "big")
        for i in range(0, max(len(secret), 1), CHUNK_BYTES)
    ]
    # coeffs[c] = [s_c, a_1, ..., a_{t-1}], fresh uniform field elements per chunk.
    coeffs = [[c, *(secrets.randbelow(PRIME) for _ in range(threshold - 1))] for c in chunks]
    return [Share(x=x, ys=tuple(_evaluate(poly, x) for poly in coeffs)) for x in xs]


def _evaluate(poly: list[int], x: int) -> int:
    """f(x) mod PRIME for f's coefficients ``poly`` (constant term first), by Horner's rule.

    Reduces once at the end rather than every step: the unreduced value has at most
    127 + t * log2(x) bits (a few hundred for a share point x < 2^32 and t in the tens),
    and the full-width ``%`` per coefficient was half of the splitting time.
    """
    acc = 0
    for a in reversed(poly):
        acc = acc * x + a
    return acc % PRIME


def reconstruct(shares: Sequence[Share], *, threshold: int, secret_len: int) -> bytes:
    """Recover a ``secret_len``-byte secret from at least ``threshold`` shares.

    Only the first ``threshold`` shares are used. With fewer true shares than the
    threshold the polynomial is underdetermined: the result is a wrong value or a
    ``SecAggError('malformed')`` when a chunk does not decode, never the secret
    (except with probability about 2^-120).
    """
    if len(shares) < threshold or threshold < 1:
        raise SecAggError(
            "below_threshold", f"got {len(shares)} shares, need threshold={threshold}"
        )
    used = shares[:threshold]
    xs = tuple(s.x for s in used)
    _check_points(xs)
    want = n_chunks(secret_len)
    if any(len(s.ys) != want for s in used):
        raise SecAggError("wrong_size", f"a share has the wrong number of chunks; expected {want}")
    lagrange = _lagrange_at_zero(xs)
    out = bytearray()
    for c in range(want):
        value = sum(lam * s.ys[c] for lam, s in zip(lagrange, used)) % PRIME
        size = min(CHUNK_BYTES, secret_len - c * CHUNK_BYTES) if secret_len else 0
        if value >= 1 << (8 * size):
            raise SecAggError(
                "malformed", f"chunk {c} does not decode to {size} bytes; shares are inconsistent"
            )
        out += value.to_bytes(size, "big")
    return bytes(out)


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_j with f(0) = sum_j l_j f(x_j) for every f of degree < len(xs)."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError(
            "malformed", f"share points must be distinct and in [1, 2^127 - 2], got {list(xs)[:8]}"
        )


__all__ = ["CHUNK_BYTES", "PRIME", "Share", "n_chunks", "reconstruct", "split"]
