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


# Compiled once: a round encodes and decodes tens of thousands of small fields (ids in
# every cohort list), where format parsing and slicing per field added up.
_U8, _U16, _U32, _U64, _F64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q", ">d"))


class Writer:
    """Accumulates encoded fields; ``b"".join(parts)`` is the body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def _put(self, field: struct.Struct, v: object) -> None:
        try:
            self.parts.append(field.pack(v))
        except struct.error as exc:
            raise SecAggError("wrong_size", f"cannot encode {v!r} as {field.format!r}: {exc}") from None

    def u8(self, v: int) -> None:
        self._put(_U8, v)

    def u32(self, v: int) -> None:
        self._put(_U32, v)

    def u64(self, v: int) -> None:
        self._put(_U64, v)

    def f64(self, v: float) -> None:
        self._put(_F64, v)

    def text(self, v: str) -> None:
        try:
            raw = v.encode()
        except (AttributeError, UnicodeEncodeError):
            raise SecAggError("malformed", f"a client id must be a UTF-8 string, got {v!r}") from None
        if len(raw) > 0xFFFF:
            raise SecAggError("wrong_size", f"a client id is {len(raw)} bytes; at most 65,535 fit")
        self.parts.append(_U16.pack(len(raw)) + raw)

    def blob(self, v: bytes) -> None:
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise SecAggError("malformed", f"a blob must be bytes, got {type(v).__name__}")
        if len(v) > 0xFFFFFFFF:
            raise SecAggError("wrong_size", f"a blob is {len(v)} bytes; at most 2^32 - 1 fit")
        self.parts.append(_U32.pack(len(v)) + bytes(v))


class Reader:
    """Reads fields from ``data`` starting at ``pos``; truncation raises ``malformed``."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def _advance(self, n: int) -> int:
        """Claim the next ``n`` bytes; returns where they start."""
        start = self.pos
        if start + n > len(self.data):
            raise SecAggError("malformed", f"message truncated at byte {start} (wanted {n} more)")
        self.pos = start + n
        return start

    def take(self, n: int) -> bytes:
        start = self._advance(n)
        return self.data[start : start + n]

    def view(self, n: int) -> memoryview:
        """Like :meth:`take`, but a zero-copy view (for the large vector payload)."""
        start = self._advance(n)
        return memoryview(self.data)[start : start + n]

    def u8(self) -> int:
        return _U8.unpack_from(self.data, self._advance(1))[0]

    def u32(self) -> int:
        return _U32.unpack_from(self.data, self._advance(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.data, self._advance(8))[0]

    def f64(self) -> float:
        return _F64.unpack_from(self.data, self._advance(8))[0]

    def text(self) -> str:
        n = _U16.unpack_from(self.data, self._advance(2))[0]
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
