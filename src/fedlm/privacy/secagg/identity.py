"""Long-term identity keys (Ed25519) that let SecAgg+ clients hold against a lying server.

Bonawitz et al. (2017), "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", Fig. 4 (the variant secure against an active server): every client has a
long-term signing key whose public half the other clients know from a trusted
enrolment (a PKI), not from the server.

- Round 1: a client signs its two fresh X25519 public keys; its neighbours verify the
  signature before deriving anything from them, so a server that swaps a key (to read the
  shares encrypted under it, or to mask with a key it knows) is caught.
- ConsistencyCheck: a client signs the survivor set U3; it unmasks only after t of its
  neighbours signed the same set, so honest clients cannot be shown different sets.

Every signed payload starts with a domain label and the SHA-256 digest of the round's
Setup (its public parameters, the recipient field left empty): a signature is bound to
one round with one graph, threshold and quantisation, and a client that was shown other
parameters than its neighbours rejects their signatures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedlm.errors import ConfigError
from fedlm.privacy.secagg.codec import Writer
from fedlm.privacy.secagg.message_base import SIGNATURE_BYTES
from fedlm.privacy.secagg.messages import Setup

IDENTITY_BYTES = 32  # raw Ed25519 public and private keys
_KEYS_LABEL = b"fedlm-secagg/v2/advertise-keys"
_SURVIVORS_LABEL = b"fedlm-secagg/v2/survivors"
_SEED_LABEL = b"fedlm-secagg/v2/seed-commitment"


def generate_identity() -> Ed25519PrivateKey:
    """A fresh long-term identity key (simulation; a deployment binds one to each node)."""
    return Ed25519PrivateKey.generate()


def as_identity(key: Ed25519PrivateKey | bytes) -> Ed25519PrivateKey:
    """Accept an Ed25519 private key object or its 32 raw bytes."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, bytes) and len(key) == IDENTITY_BYTES:
        return Ed25519PrivateKey.from_private_bytes(key)
    size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
    raise ConfigError(
        f"a SecAgg+ identity key must be an Ed25519PrivateKey or {IDENTITY_BYTES} raw bytes, got {size}"
    )


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an identity (what goes in the enrolment map)."""
    return key.public_key().public_bytes_raw()


def enrolment(identities: Mapping[str, Ed25519PrivateKey | bytes]) -> dict[str, bytes]:
    """client id -> raw public identity key, for a set of private identities."""
    return {cid: public_bytes(as_identity(key)) for cid, key in identities.items()}


def check_enrolment(known: Mapping[str, bytes]) -> dict[str, bytes]:
    """Validate an enrolment map (str id -> 32 raw bytes); raises ConfigError naming the entry."""
    out: dict[str, bytes] = {}
    for cid, pub in known.items():
        if not isinstance(cid, str) or not isinstance(pub, bytes) or len(pub) != IDENTITY_BYTES:
            raise ConfigError(
                f"enrolment entry {cid!r} must map a client id to {IDENTITY_BYTES} raw Ed25519 "
                f"public-key bytes, got {type(pub).__name__}"
            )
        out[cid] = pub
    return out


def client_identity(
    client_id: str, identity: Ed25519PrivateKey | bytes | None, known: Mapping[str, bytes] | None
) -> tuple[Ed25519PrivateKey | None, dict[str, bytes]]:
    """Check a client's identity arguments: both or neither, and the map lists its own key."""
    if (identity is None) != (known is None):
        raise ConfigError(
            f"SecAggClient({client_id!r}) needs both identity= and known_identities= (or neither)"
        )
    if identity is None or known is None:
        return None, {}
    key, enrolled = as_identity(identity), check_enrolment(known)
    if enrolled.get(client_id) != public_bytes(key):
        raise ConfigError(
            f"the enrolment map does not list {client_id!r} with this client's identity key; "
            "enrol the key's public half under the client's id"
        )
    return key, enrolled


def setup_digest(setup: Setup) -> bytes:
    """SHA-256 of the Setup's public parameters (the recipient field left empty)."""
    return hashlib.sha256(replace(setup, client="").to_bytes()).digest()


def keys_payload(digest: bytes, client: str, enc_public: bytes, mask_public: bytes) -> bytes:
    """What a client signs in ``advertise_keys``: label, Setup digest, its id, both keys."""
    w = Writer()
    w.blob(_KEYS_LABEL)
    w.blob(digest)
    w.text(client)
    w.blob(enc_public)
    w.blob(mask_public)
    return b"".join(w.parts)


def survivors_payload(digest: bytes, survivors: Sequence[str]) -> bytes:
    """What a client signs in the consistency check: label, Setup digest, the set U3."""
    w = Writer()
    w.blob(_SURVIVORS_LABEL)
    w.blob(digest)
    w.u32(len(survivors))
    for cid in survivors:
        w.text(cid)
    return b"".join(w.parts)


def seed_commitment(seed: bytes, *, client: str, round_id: int) -> bytes:
    """SHA-256 commitment to a self-mask seed b_i, bound to the round and the client."""
    w = Writer()
    w.blob(_SEED_LABEL)
    w.u64(round_id)
    w.text(client)
    w.blob(seed)
    return hashlib.sha256(b"".join(w.parts)).digest()


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """A 64-byte Ed25519 signature."""
    return key.sign(payload)


def verify(public: bytes | None, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``payload`` under ``public``.

    Never raises: an unknown signer (None), a malformed key or signature, or a wrong
    signature all give False.
    """
    if public is None or len(public) != IDENTITY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


__all__ = [
    "IDENTITY_BYTES",
    "as_identity",
    "check_enrolment",
    "client_identity",
    "enrolment",
    "generate_identity",
    "keys_payload",
    "public_bytes",
    "seed_commitment",
    "setup_digest",
    "sign",
    "survivors_payload",
    "verify",
]
