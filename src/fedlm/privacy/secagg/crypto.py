"""The cryptographic primitives of SecAgg, all from the ``cryptography`` package.

- Key agreement: X25519 (RFC 7748); the raw shared secret goes through
  HKDF-SHA256 (RFC 5869) with a label and the round id before any use, so the
  encryption key and the mask seed of one pair of clients are independent.
- Authenticated encryption of shares: AES-256-GCM, a random 12-byte nonce per
  message, the (round, sender, recipient) triple as associated data so the server
  cannot re-route a share to another client or round.
- Mask PRG: the AES-256-CTR keystream under a 32-byte seed, read as little-endian
  unsigned words with ``np.frombuffer`` (vectorised; about 1-2 GB/s with AES-NI).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedlm.privacy.secagg.errors import SecAggError

KEY_BYTES = 32  # X25519 keys, AES-256 keys and mask seeds are all 32 bytes
NONCE_BYTES = 12
TAG_BYTES = 16
_ZERO_IV = bytes(16)  # every PRG key is used for exactly one stream, so a fixed IV is safe


def generate_private_key() -> bytes:
    """A fresh X25519 private key as 32 raw bytes (what gets Shamir-shared)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def private_key(private: bytes | X25519PrivateKey) -> X25519PrivateKey:
    """The key object of a raw private key. Parse once and pass the object to :func:`agree`:
    a client agrees with each of its d neighbours per key, and parsing costs as much as
    the exchange itself."""
    if isinstance(private, X25519PrivateKey):
        return private
    return X25519PrivateKey.from_private_bytes(private)


def public_key(private: bytes | X25519PrivateKey) -> bytes:
    """The 32-byte X25519 public key of a private key (raw bytes or object)."""
    return private_key(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes | X25519PrivateKey, peer_public: bytes, *, label: bytes, round_id: int) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public)) -> 32 bytes, bound to a label and round.

    Symmetric: ``agree(a, pub(b)) == agree(b, pub(a))`` for the same label and round.
    ``private`` is raw bytes or a :func:`private_key` object (the same result, no re-parse).
    """
    if len(peer_public) != KEY_BYTES:
        raise SecAggError(
            "wrong_size", f"public key is {len(peer_public)} bytes, expected {KEY_BYTES}"
        )
    try:
        shared = private_key(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:  # all-zero shared secret from a low-order point
        raise SecAggError("malformed", f"key agreement failed: {exc}") from None
    info = b"fedlm-secagg/v1/" + label + b"/" + round_id.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM: nonce (12 bytes) || ciphertext || tag (16 bytes)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; a failed tag raises ``SecAggError('decrypt_failed')``."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError(
            "wrong_size", f"ciphertext of {len(blob)} bytes is shorter than nonce + tag"
        )
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise SecAggError(
            "decrypt_failed", "AES-GCM tag did not verify (tampered or mis-routed)"
        ) from None


def mask_dtype(modulus_bits: int) -> np.dtype:
    """Word type that holds values mod 2^m and wraps exactly: uint32 for m <= 32, else uint64."""
    if not 1 <= modulus_bits <= 64:
        raise SecAggError("bad_params", f"modulus_bits={modulus_bits} must be in [1, 64]")
    return np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")


def prg(seed: bytes, length: int, *, dtype: np.dtype) -> np.ndarray:
    """``length`` pseudo-random words: the AES-256-CTR keystream under ``seed``.

    Words are uniform over the full dtype range; reducing mod 2^m (m <= word bits)
    keeps them uniform because 2^m divides 2^32 and 2^64.

    Returns:
        array of shape (length,) and the given dtype (a fresh, writable array).
    """
    out = bytearray(length * dtype.itemsize + _BLOCK - 1)
    _keystream_into(seed, out, length * dtype.itemsize)
    return np.frombuffer(out, dtype=dtype, count=length)  # dtype may be any unsigned word


def apply_prg(acc: np.ndarray, seed: bytes, *, subtract: bool = False, buf: bytearray | None = None) -> None:
    """``acc += PRG(seed)`` (or ``-=``) in place, wrapping mod 2^(word bits).

    Args:
        acc: 1-D unsigned word array (uint32 or uint64), modified in place.
        seed: 32-byte PRG seed.
        subtract: subtract the stream instead of adding it.
        buf: scratch space of at least ``acc.nbytes + 15`` bytes, reused between calls
            so masking with k neighbours allocates once instead of k times.
    """
    nbytes = acc.size * acc.dtype.itemsize
    if buf is None or len(buf) < nbytes + _BLOCK - 1:
        buf = bytearray(nbytes + _BLOCK - 1)
    _keystream_into(seed, buf, nbytes)
    stream = np.frombuffer(buf, dtype=acc.dtype, count=acc.size)
    (np.subtract if subtract else np.add)(acc, stream, out=acc)


def apply_streams(
    acc: np.ndarray,
    streams: Sequence[tuple[bytes, bool]],
    *,
    addends: Sequence[np.ndarray] = (),
    chunk_words: int = 1 << 16,
) -> None:
    """``acc += sum(addends) + sum_j (-1)^sub_j PRG(seed_j)`` in place, chunk by chunk.

    Equal to calling :func:`apply_prg` once per ``(seed, subtract)`` pair, but each
    keystream block is added while it is still in cache and ``acc`` is walked once per
    chunk, so masking with k streams reads and writes memory about once instead of k times.

    Args:
        acc: 1-D unsigned word array, modified in place.
        streams: (32-byte seed, subtract) pairs.
        addends: arrays of acc's shape and dtype to add as well (the server's masked inputs).
        chunk_words: words per chunk (2^16 uint32 words = 256 KiB).
    """
    for seed, _ in streams:
        if len(seed) != KEY_BYTES:
            raise SecAggError("wrong_size", f"PRG seed is {len(seed)} bytes, expected {KEY_BYTES}")
    if (not streams and not addends) or acc.size == 0:
        return
    itemsize = acc.dtype.itemsize
    words = min(chunk_words, acc.size)
    zeros = memoryview(_zeros(words * itemsize))
    buf = np.empty(words * itemsize + _BLOCK - 1, dtype=np.uint8)  # no need to zero it
    ctxs = [
        (Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor(), np.subtract if sub else np.add)
        for seed, sub in streams
    ]
    for start in range(0, acc.size, words):
        part = acc[start : start + words]
        nbytes = part.size * itemsize
        stream = buf[:nbytes].view(acc.dtype)
        for other in addends:
            np.add(part, other[start : start + words], out=part)
        for ctx, op in ctxs:  # CTR contexts carry on where the previous chunk stopped
            ctx.update_into(zeros[:nbytes], buf)
            op(part, stream, out=part)


def scratch(length: int, *, dtype: np.dtype) -> bytearray:
    """A scratch buffer for :func:`apply_prg` on vectors of ``length`` words."""
    return bytearray(length * dtype.itemsize + _BLOCK - 1)


_BLOCK = 16  # AES block: ``update_into`` wants len(out) >= len(data) + 15
_ZEROS: dict[int, bytes] = {}


def _keystream_into(seed: bytes, out: bytearray, nbytes: int) -> None:
    """Write the first ``nbytes`` of the AES-256-CTR keystream under ``seed`` into ``out``."""
    if len(seed) != KEY_BYTES:
        raise SecAggError("wrong_size", f"PRG seed is {len(seed)} bytes, expected {KEY_BYTES}")
    Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor().update_into(_zeros(nbytes), out)


def _zeros(nbytes: int) -> bytes:
    """A cached zero block: encrypting zeros yields the raw keystream."""
    zeros = _ZEROS.get(nbytes)
    if zeros is None:
        if len(_ZEROS) >= 4:
            _ZEROS.clear()
        zeros = _ZEROS[nbytes] = bytes(nbytes)
    return zeros


__all__ = [
    "KEY_BYTES",
    "agree",
    "apply_prg",
    "apply_streams",
    "decrypt",
    "encrypt",
    "generate_private_key",
    "mask_dtype",
    "prg",
    "public_key",
    "scratch",
]
