"""The base of every SecAgg+ message: the header, the field checks, id lists.

``Message.to_bytes`` writes a 10-byte header -- version (u8), type (u8), round id (u64) --
then the recipient's or sender's id and the body (:mod:`fedlm.privacy.secagg.messages`
defines the bodies and ``decode``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from fedlm.privacy.secagg.codec import Reader, Writer, pack
from fedlm.privacy.secagg.crypto import KEY_BYTES
from fedlm.privacy.secagg.errors import SecAggError

VERSION = 2
HEADER = struct.Struct(">BBQ")


@dataclass(frozen=True)
class Message:
    """Base of every SecAgg message: the round and the client involved."""

    TYPE: ClassVar[int] = 0
    PHASE: ClassVar[str] = ""
    UPLOAD: ClassVar[bool] = True

    round_id: int
    client: str

    def to_bytes(self) -> bytes:
        """The exact wire encoding (header + body)."""
        w = Writer()
        w.text(self.client)
        self._encode(w)
        return b"".join([pack(">BBQ", VERSION, self.TYPE, self.round_id), *w.parts])  # one copy

    def _encode(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> Message:
        raise NotImplementedError


SIGNATURE_BYTES = 64  # Ed25519


def check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise SecAggError("wrong_size", f"{name} must be {KEY_BYTES} bytes, got {size}")


def check_signature(name: str, sig: bytes, *, optional: bool) -> None:
    """A signature is 64 bytes, or empty where ``optional`` (unauthenticated clients)."""
    if not isinstance(sig, bytes) or not (len(sig) == SIGNATURE_BYTES or (optional and not sig)):
        size = len(sig) if isinstance(sig, (bytes, bytearray)) else type(sig).__name__
        allowed = f"{SIGNATURE_BYTES} bytes" + (" or empty" if optional else "")
        raise SecAggError("wrong_size", f"{name} must be {allowed}, got {size}")


def write_ids(w: Writer, ids: tuple[str, ...]) -> None:
    w.u32(len(ids))
    for c in ids:
        w.text(c)


def read_ids(r: Reader) -> tuple[str, ...]:
    return tuple(r.text() for _ in range(r.u32()))


__all__ = ["HEADER", "SIGNATURE_BYTES", "VERSION", "Message", "check_key", "check_signature", "read_ids", "write_ids"]
