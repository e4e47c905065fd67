"""Byte-level helpers of the SecAgg wire format: big-endian fields and packed words.

Strings are u16-length-prefixed UTF-8, blobs u32-length-prefixed; a masked vector is
ceil(m / 8) little-endian bytes per value mod 2^m (1.0x fp32 for m = 32).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from fedlm.privacy.secagg.crypto import mask_dtype
from fedlm.privacy.secagg.errors import SecAggError


def pack(fmt: str, *values: object) -> bytes:
    """``struct.pack`` that raises ``SecAggError('wrong_size')`` for a value that does not fit."""
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise SecAggError("wrong_size", f"cannot encode {values!r} as {fmt!r}: {exc}") from None


class Writer:
    """Accumulates encoded fields; ``b"".join(parts)`` is the body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(pack(">B", v))

    def u32(self, v: int) -> None:
        self.parts.append(pack(">I", v))

    def u64(self, v: int) -> None:
        self.parts.append(pack(">Q", v))

    def f64(self, v: float) -> None:
        self.parts.append(pack(">d", v))

    def text(self, v: str) -> None:
        try:
            raw = v.encode()
        except (AttributeError, UnicodeEncodeError):
            raise SecAggError("malformed", f"a client id must be a UTF-8 string, got {v!r}") from None
        self.parts.append(pack(">H", len(raw)) + raw)

    def blob(self, v: bytes) -> None:
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise SecAggError("malformed", f"a blob must be bytes, got {type(v).__name__}")
        self.parts.append(pack(">I", len(v)) + bytes(v))


class Reader:
    """Reads fields from ``data`` starting at ``pos``; truncation raises ``malformed``."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SecAggError(
                "malformed", f"message truncated at byte {self.pos} (wanted {n} more)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def view(self, n: int) -> memoryview:
        """Like :meth:`take`, but a zero-copy view (for the large vector payload)."""
        if self.pos + n > len(self.data):
            raise SecAggError(
                "malformed", f"message truncated at byte {self.pos} (wanted {n} more)"
            )
        out = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def f64(self) -> float:
        return struct.unpack(">d", self.take(8))[0]

    def text(self) -> str:
        (n,) = struct.unpack(">H", self.take(2))
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise SecAggError("malformed", "a client id is not valid UTF-8") from None

    def blob(self) -> bytes:
        return self.take(self.u32())


def pack_words(values: np.ndarray, *, modulus_bits: int) -> bytes | memoryview:
    """Values mod 2^m as ceil(m / 8) little-endian bytes each.

    When no packing is needed this is a zero-copy view of ``values`` (for ``b"".join``).
    """
    width = math.ceil(modulus_bits / 8)
    le = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
    if width == le.dtype.itemsize:
        return memoryview(le).cast("B")
    return np.ascontiguousarray(
        le.view(np.uint8).reshape(-1, le.dtype.itemsize)[:, :width]
    ).tobytes()


def unpack_words(data: bytes | memoryview, *, n: int, modulus_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_words`; returns shape (n,) in the word dtype for m.

    Unpadded words come back as a read-only view of ``data`` (no copy).
    """
    dtype = mask_dtype(modulus_bits)
    width = math.ceil(modulus_bits / 8)
    if len(data) != n * width:
        raise SecAggError(
            "wrong_size", f"vector payload is {len(data)} bytes, expected {n} x {width}"
        )
    if width == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype)
    padded = np.zeros((n, dtype.itemsize), dtype=np.uint8)
    padded[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(n, width)
    return padded.reshape(-1).view(dtype)


__all__ = ["Reader", "Writer", "pack", "pack_words", "unpack_words"]
