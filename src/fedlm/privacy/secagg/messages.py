"""Versioned messages of SecAgg+ and their exact byte encoding (stdlib + numpy only).

Every message has a round id and the client it comes from (uploads) or goes to
(downloads). ``to_bytes`` writes a 10-byte header -- version (u8), type (u8), round
id (u64) -- then the body, with length-prefixed strings (u16) and blobs (u32), so the
byte counts the simulator reports are the bytes a runtime would send. ``decode``
parses any message and rejects a foreign version, an unknown type or trailing bytes.

Masked vectors travel packed: ceil(m / 8) little-endian bytes per value mod 2^m.

Version 2 adds what the malicious-server variant of Bonawitz et al. (2017, Fig. 4) needs:
an Ed25519 signature on each client's advertised keys (forwarded with them to its
neighbours), the ConsistencyCheck round (:class:`ConsistencyRequest`,
:class:`ConsistencySignature`, and the signatures forwarded in :class:`UnmaskRequest`),
and a commitment to the self-mask seed that lets the server tell a wrong share from a
client's out-of-range input. Signatures are empty when the clients run unauthenticated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedlm.privacy.secagg.codec import Reader, Writer, pack_words, unpack_words
from fedlm.privacy.secagg.crypto import mask_dtype
from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.message_base import (
    HEADER,
    SIGNATURE_BYTES,
    VERSION,
    Message,
    check_key,
    check_signature,
    read_ids,
    write_ids,
)


@dataclass(frozen=True)
class Setup(Message):
    """Server -> client: the round's public parameters (phase 0)."""

    TYPE: ClassVar[int] = 1
    PHASE: ClassVar[str] = "setup"
    UPLOAD: ClassVar[bool] = False

    cohort: tuple[str, ...] = ()
    graph_seed: int = 0
    degree: int = 0
    threshold: int = 0
    vector_len: int = 0
    modulus_bits: int = 32
    bits: int = 16
    clip: float = 1.0
    max_weight: int = 1

    def _encode(self, w: Writer) -> None:
        write_ids(w, self.cohort)
        for v in (self.graph_seed, self.degree, self.threshold, self.vector_len):
            w.u64(v)
        w.u8(self.modulus_bits)
        w.u8(self.bits)
        w.f64(self.clip)
        w.u64(self.max_weight)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> Setup:
        cohort = read_ids(r)
        seed, degree, threshold, length = r.u64(), r.u64(), r.u64(), r.u64()
        return cls(
            round_id,
            client,
            cohort,
            seed,
            degree,
            threshold,
            length,
            r.u8(),
            r.u8(),
            r.f64(),
            r.u64(),
        )


@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Client -> server: the two X25519 public keys (phase 1), signed.

    ``seed_commitment`` is SHA-256 of the self-mask seed b_i (bound to round and client),
    which the server checks the reconstructed seed against; ``signature`` is the client's
    Ed25519 signature over the round's Setup and both keys
    (:func:`~fedlm.privacy.secagg.identity.keys_payload`), empty when unauthenticated.
    """

    TYPE: ClassVar[int] = 2
    PHASE: ClassVar[str] = "advertise_keys"

    enc_public: bytes = b""
    mask_public: bytes = b""
    seed_commitment: bytes = b""
    signature: bytes = b""

    def __post_init__(self) -> None:
        check_key("enc_public", self.enc_public)
        check_key("mask_public", self.mask_public)
        check_key("seed_commitment", self.seed_commitment)
        check_signature("signature", self.signature, optional=True)

    def _encode(self, w: Writer) -> None:
        for blob in (self.enc_public, self.mask_public, self.seed_commitment, self.signature):
            w.blob(blob)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> AdvertiseKeys:
        return cls(round_id, client, r.blob(), r.blob(), r.blob(), r.blob())


@dataclass(frozen=True)
class NeighbourKeys(Message):
    """Server -> client: (id, enc_public, mask_public, signature) of each live neighbour."""

    TYPE: ClassVar[int] = 3
    PHASE: ClassVar[str] = "advertise_keys"
    UPLOAD: ClassVar[bool] = False

    keys: tuple[tuple[str, bytes, bytes, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(e, tuple) and len(e) == 4 for e in self.keys):
            raise SecAggError("malformed", "neighbour keys are (id, enc_public, mask_public, signature)")
        for cid, enc, mask, sig in self.keys:
            check_key(f"enc_public of {cid!r}", enc)
            check_key(f"mask_public of {cid!r}", mask)
            check_signature(f"signature of {cid!r}", sig, optional=True)

    def _encode(self, w: Writer) -> None:
        w.u32(len(self.keys))
        for cid, enc, mask, sig in self.keys:
            w.text(cid)
            w.blob(enc)
            w.blob(mask)
            w.blob(sig)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> NeighbourKeys:
        keys = tuple((r.text(), r.blob(), r.blob(), r.blob()) for _ in range(r.u32()))
        return cls(round_id, client, keys)


@dataclass(frozen=True)
class _Routed(Message):
    """A list of (other client id, blob) pairs."""

    items: tuple[tuple[str, bytes], ...] = ()

    def _encode(self, w: Writer) -> None:
        w.u32(len(self.items))
        for cid, blob in self.items:
            w.text(cid)
            w.blob(blob)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> _Routed:
        return cls(round_id, client, tuple((r.text(), r.blob()) for _ in range(r.u32())))


@dataclass(frozen=True)
class ShareKeys(_Routed):
    """Client -> server: one AES-GCM ciphertext of shares per neighbour (phase 2).

    ``items`` holds (recipient id, ciphertext).
    """

    TYPE: ClassVar[int] = 4
    PHASE: ClassVar[str] = "share_keys"


@dataclass(frozen=True)
class ForwardedShares(_Routed):
    """Server -> client: the ciphertexts addressed to it; ``items`` holds (sender id, ciphertext)."""

    TYPE: ClassVar[int] = 5
    PHASE: ClassVar[str] = "share_keys"
    UPLOAD: ClassVar[bool] = False


@dataclass(frozen=True, eq=False)
class MaskedInput(Message):
    """Client -> server: the masked vector mod 2^m, shape (vector_len + 1,) (phase 3).

    The last value is the client's masked weight, so the server learns only the total
    weight. ``values`` has the word dtype of :func:`~fedlm.privacy.secagg.crypto.mask_dtype`.
    """

    TYPE: ClassVar[int] = 6
    PHASE: ClassVar[str] = "masked_input"

    modulus_bits: int = 32
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))

    def __post_init__(self) -> None:
        dtype = mask_dtype(self.modulus_bits)
        if (
            not isinstance(self.values, np.ndarray)
            or self.values.ndim != 1
            or self.values.dtype != dtype
        ):
            raise SecAggError(
                "wrong_size", f"values must be a 1-D {dtype} array for m={self.modulus_bits}"
            )

    def _encode(self, w: Writer) -> None:
        w.u8(self.modulus_bits)
        w.u64(self.values.size)
        w.parts.append(pack_words(self.values, modulus_bits=self.modulus_bits))

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> MaskedInput:
        m = r.u8()
        n = r.u64()
        width = math.ceil(m / 8) if 1 <= m <= 64 else 0
        if width == 0:
            raise SecAggError("malformed", f"modulus_bits={m} outside [1, 64]")
        return cls(round_id, client, m, unpack_words(r.view(n * width), n=n, modulus_bits=m))


@dataclass(frozen=True)
class ConsistencyRequest(Message):
    """Server -> client: the clients whose masked input arrived (U3), to be signed (phase 4).

    Bonawitz et al. (2017), Fig. 4, ConsistencyCheck: each client signs (round, U3) and
    unmasks only after t of its neighbours signed the same set.
    """

    TYPE: ClassVar[int] = 9
    PHASE: ClassVar[str] = "consistency"
    UPLOAD: ClassVar[bool] = False

    survivors: tuple[str, ...] = ()

    def _encode(self, w: Writer) -> None:
        write_ids(w, self.survivors)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> ConsistencyRequest:
        return cls(round_id, client, read_ids(r))


@dataclass(frozen=True)
class ConsistencySignature(Message):
    """Client -> server: its Ed25519 signature over (Setup, U3) (phase 4)."""

    TYPE: ClassVar[int] = 10
    PHASE: ClassVar[str] = "consistency"

    signature: bytes = b""

    def __post_init__(self) -> None:
        check_signature("signature", self.signature, optional=False)

    def _encode(self, w: Writer) -> None:
        w.blob(self.signature)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> ConsistencySignature:
        return cls(round_id, client, r.blob())


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """Server -> client: the survivors U3 and its neighbours' signatures over U3 (phase 5).

    ``signatures`` holds (signer id, signature); it is empty when the clients run
    unauthenticated (no consistency phase).
    """

    TYPE: ClassVar[int] = 7
    PHASE: ClassVar[str] = "unmasking"
    UPLOAD: ClassVar[bool] = False

    survivors: tuple[str, ...] = ()
    signatures: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(e, tuple) and len(e) == 2 for e in self.signatures):
            raise SecAggError("malformed", "forwarded signatures are (signer id, signature)")
        for cid, sig in self.signatures:
            check_signature(f"consistency signature of {cid!r}", sig, optional=False)

    def _encode(self, w: Writer) -> None:
        write_ids(w, self.survivors)
        w.u32(len(self.signatures))
        for cid, sig in self.signatures:
            w.text(cid)
            w.blob(sig)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> UnmaskRequest:
        survivors = read_ids(r)
        return cls(round_id, client, survivors, tuple((r.text(), r.blob()) for _ in range(r.u32())))


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Client -> server: shares of survivors' seeds and of dropped clients' mask keys.

    ``seed_shares`` and ``key_shares`` hold (owner id, serialised Shamir share).
    """

    TYPE: ClassVar[int] = 8
    PHASE: ClassVar[str] = "unmasking"

    seed_shares: tuple[tuple[str, bytes], ...] = ()
    key_shares: tuple[tuple[str, bytes], ...] = ()

    def _encode(self, w: Writer) -> None:
        for group in (self.seed_shares, self.key_shares):
            w.u32(len(group))
            for cid, share in group:
                w.text(cid)
                w.blob(share)

    @classmethod
    def _decode(cls, r: Reader, round_id: int, client: str) -> UnmaskShares:
        seeds = tuple((r.text(), r.blob()) for _ in range(r.u32()))
        keys = tuple((r.text(), r.blob()) for _ in range(r.u32()))
        return cls(round_id, client, seeds, keys)


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Setup,
        AdvertiseKeys,
        NeighbourKeys,
        ShareKeys,
        ForwardedShares,
        MaskedInput,
        UnmaskRequest,
        UnmaskShares,
        ConsistencyRequest,
        ConsistencySignature,
    )
}


def decode(data: bytes) -> Message:
    """Parse bytes written by :meth:`Message.to_bytes`; raises ``SecAggError`` on bad input."""
    if len(data) < HEADER.size:
        raise SecAggError("malformed", f"message of {len(data)} bytes is shorter than the header")
    version, kind, round_id = HEADER.unpack_from(data)
    if version != VERSION:
        raise SecAggError(
            "version", f"message version {version} is not {VERSION}; upgrade the peer"
        )
    if kind not in MESSAGE_TYPES:
        raise SecAggError("malformed", f"unknown message type {kind}")
    r = Reader(data, HEADER.size)
    msg = MESSAGE_TYPES[kind]._decode(r, round_id, r.text())
    if r.pos != len(data):
        raise SecAggError(
            "malformed",
            f"{len(data) - r.pos} trailing bytes after a {MESSAGE_TYPES[kind].__name__}",
        )
    return msg


__all__ = [
    "MESSAGE_TYPES",
    "SIGNATURE_BYTES",
    "VERSION",
    "AdvertiseKeys",
    "ConsistencyRequest",
    "ConsistencySignature",
    "ForwardedShares",
    "MaskedInput",
    "Message",
    "NeighbourKeys",
    "Setup",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskShares",
    "decode",
]
