"""A SecAgg+ client's state as bytes: JSON plus raw key bytes, no pickle.

A deployed client lives on its own disk between Flower messages. Its per-round secrets
(the X25519 private keys c_sk and s_sk, the self-mask seed b and the shares it holds for
its neighbours) must never be readable by others, and loading them must never run code.
So the state is

    b"FLSAGC" | u8 format (1) | u32 length of the header | header (UTF-8 JSON) | blobs

where the JSON names every field, each byte string in it is an index into the blob
table (``"blobs"``: their lengths, in order), and the blobs follow, raw. Loading checks
every field: exact key sets, types (no bool where an int belongs), lengths of keys and
shares, phase and contents agreeing, the saved Setup re-checked against the saved config,
every blob used exactly once and no trailing bytes. Any failure is
``SecAggError('bad_state')``. The long-term identity key is not stored: the caller passes
it to :meth:`SecAggClient.from_bytes` again (it must match the saved public key).

:func:`write_private` writes such bytes with mode 0600, atomically.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import FedlmError
from fedlm.privacy.secagg import crypto, shamir
from fedlm.privacy.secagg import identity as auth
from fedlm.privacy.secagg.errors import InsecureSecAggWarning, SecAggError
from fedlm.privacy.secagg.messages import Setup, decode
from fedlm.privacy.secagg.safety import check_setup

MAGIC = b"FLSAGC"
FORMAT = 1
_PREFIX = struct.Struct(">6sBI")
_KEYS = {"client_id", "phase", "config", "identity_public", "known_identities", "rng", "setup",
         "secrets", "keys", "held", "survivors", "blobs"}
_RNGS = ("PCG64", "PCG64DXSM")
C = TypeVar("C")


SECRET_BYTES = crypto.KEY_BYTES
SHARE_BYTES = len(shamir.Share(x=1, ys=(0,) * shamir.n_chunks(SECRET_BYTES)).to_bytes())
CLIENT_PHASES = ("setup", "advertise_keys", "share_keys", "masked_input", "consistency", "done", "aborted")


def client_to_bytes(client: Any) -> bytes:
    """Serialise a :class:`~fedlm.privacy.secagg.client.SecAggClient` (see module docstring)."""
    blobs: list[bytes] = []

    def ref(data: bytes) -> int:
        blobs.append(bytes(data))
        return len(blobs) - 1

    bitgen = client._rng.bit_generator
    if type(bitgen).__name__ not in _RNGS:
        raise SecAggError("bad_state", f"cannot save a {type(bitgen).__name__} rng; use PCG64 (default_rng)")
    setup = client._setup
    header = {
        "client_id": client.client_id,
        "phase": client.phase,
        "config": client.config.model_dump(mode="json") if client._match_config else None,
        "identity_public": ref(auth.public_bytes(client._identity)) if client._identity else None,
        "known_identities": {cid: ref(pub) for cid, pub in client._known.items()},
        "rng": bitgen.state,
        "setup": ref(setup.to_bytes()) if setup is not None else None,
        "secrets": None if setup is None else
        {"enc_sk": ref(client._enc_sk), "mask_sk": ref(client._mask_sk), "seed": ref(client._seed)},
        "keys": [[cid, ref(enc), ref(mask)] for cid, (enc, mask) in client._keys.items()],
        "held": [[cid, ref(ks), ref(bs)] for cid, (ks, bs) in client._held.items()],
        "survivors": list(client._survivors),
    }
    header["blobs"] = [len(b) for b in blobs]
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(MAGIC, FORMAT, len(text)), text, *blobs])


def client_from_bytes(
    cls: type[C],
    data: bytes,
    *,
    identity: Ed25519PrivateKey | bytes | None,
    rng: np.random.Generator | None,
) -> C:
    """Rebuild a client saved by :func:`client_to_bytes`, validating every field."""
    try:
        return _load(cls, data, identity=identity, rng=rng)
    except SecAggError as exc:
        if exc.reason == "bad_state":
            raise
        raise SecAggError("bad_state", f"saved SecAgg+ client is invalid: {exc}") from None
    except (FedlmError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise SecAggError("bad_state", f"saved SecAgg+ client is invalid: {type(exc).__name__}: {exc}") from None


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a 0600 temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # whatever the umask did
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- loading -------------------------------------------------------------------------------
def _bad(detail: str) -> SecAggError:
    return SecAggError("bad_state", detail)


def _load(cls: type[C], data: bytes, *, identity: Any, rng: np.random.Generator | None) -> C:

    if not isinstance(data, (bytes, bytearray)) or len(data) < _PREFIX.size:
        raise _bad("not a saved SecAgg+ client (too short)")
    magic, fmt, size = _PREFIX.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT:
        raise _bad(f"not a saved SecAgg+ client of format {FORMAT} (magic {magic!r}, format {fmt})")
    if _PREFIX.size + size > len(data):
        raise _bad("header runs past the end of the data")
    header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + size]).decode("utf-8"))
    if not isinstance(header, dict) or set(header) != _KEYS:
        raise _bad(f"header keys must be {sorted(_KEYS)}")
    blobs = _blobs(header["blobs"], data, _PREFIX.size + size)
    used: set[int] = set()

    def blob(index: Any, length: int | None, what: str) -> bytes:
        if not _is_int(index) or not 0 <= index < len(blobs) or index in used:
            raise _bad(f"{what}: blob index {index!r} is invalid or used twice")
        used.add(index)
        if length is not None and len(blobs[index]) != length:
            raise _bad(f"{what} is {len(blobs[index])} bytes, expected {length}")
        return blobs[index]

    cid, phase = _str(header["client_id"], "client_id"), _str(header["phase"], "phase")
    if phase not in CLIENT_PHASES:
        raise _bad(f"phase {phase!r} is not one of {list(CLIENT_PHASES)}")
    config = None if header["config"] is None else SecAggConfig.model_validate(_dict(header["config"], "config"))
    known = {_str(k, "identity id"): blob(v, auth.IDENTITY_BYTES, f"identity of {k!r}")
             for k, v in _dict(header["known_identities"], "known_identities").items()}
    public = None if header["identity_public"] is None else blob(header["identity_public"], auth.IDENTITY_BYTES, "identity_public")
    key = _identity(identity, public)
    if key is None and known:
        raise _bad("an enrolment map without an identity key")
    with warnings.catch_warnings():  # an unauthenticated client warned when it was made
        warnings.simplefilter("ignore", InsecureSecAggWarning)
        client = cls(cid, rng=rng if rng is not None else _rng(header["rng"]), config=config,
                     identity=key, known_identities=known if key is not None else None)
    if header["setup"] is not None:
        setup = decode(blob(header["setup"], None, "setup"))
        if not isinstance(setup, Setup) or setup.client != cid:
            raise _bad(f"saved setup is not a Setup addressed to {cid!r}")
        client._graph = check_setup(setup, me=cid, config=client.config, match_config=client._match_config)
        client._setup, client._digest = setup, auth.setup_digest(setup)
        client._index = {c: i for i, c in enumerate(setup.cohort)}
        secrets = _dict(header["secrets"], "secrets")
        if set(secrets) != {"enc_sk", "mask_sk", "seed"}:
            raise _bad("secrets must hold exactly enc_sk, mask_sk, seed")
        client._enc_sk, client._mask_sk, client._seed = (blob(secrets[n], 32, n) for n in ("enc_sk", "mask_sk", "seed"))
        client._enc_key, client._mask_key = crypto.private_key(client._enc_sk), crypto.private_key(client._mask_sk)
    elif header["secrets"] is not None:
        raise _bad("secrets without a setup")
    mine = client._graph.get(cid, frozenset())
    client._keys = _pairs(header["keys"], "keys", allowed=mine, value=lambda i, w: blob(i, 32, w))
    client._held = _pairs(header["held"], "held", allowed=set(client._keys), value=lambda i, w: blob(i, SHARE_BYTES, w))
    survivors = tuple(_str(c, "survivor") for c in _list(header["survivors"], "survivors"))
    if not set(survivors) <= set(client._index) or len(set(survivors)) != len(survivors):
        raise _bad("survivors must be distinct cohort members")
    client._survivors = survivors
    if used != set(range(len(blobs))):
        raise _bad(f"{len(blobs) - len(used)} blobs are not referenced by any field")
    _check_phase(client, phase)
    client.phase = phase
    return client


def _check_phase(client: Any, phase: str) -> None:
    """The saved contents must be what a client in ``phase`` holds."""
    order = ("setup", "advertise_keys", "share_keys", "masked_input", "consistency")
    at = order.index(phase) if phase in order else len(order)  # done / aborted: past all
    if (client._setup is None) != (phase == "setup"):
        raise _bad(f"phase {phase!r} with{'out' if client._setup is None else ''} a setup")
    if client._keys and at < 2:
        raise _bad(f"neighbour keys saved in phase {phase!r}")
    if client._held and phase not in ("masked_input", "consistency"):
        raise _bad(f"held shares saved in phase {phase!r}")
    if client._survivors and (phase not in ("consistency", "done", "aborted") or not client.authenticated):
        raise _bad(f"a signed survivor set saved in phase {phase!r}")
    if phase == "consistency" and not client._survivors:
        raise _bad("phase 'consistency' without the signed survivor set")


def _blobs(lengths: Any, data: bytes, start: int) -> list[bytes]:
    items = _list(lengths, "blobs")
    if not all(_is_int(n) and n >= 0 for n in items):
        raise _bad("blob lengths must be non-negative integers")
    if start + sum(items) != len(data):
        raise _bad(f"blobs hold {len(data) - start} bytes, the header lists {sum(items)}")
    out, pos = [], start
    for n in items:
        out.append(bytes(data[pos : pos + n]))
        pos += n
    return out


def _identity(given: Any, public: bytes | None) -> Ed25519PrivateKey | None:
    if public is None:
        if given is not None:
            raise _bad("an identity key was passed but the saved client had none")
        return None
    if given is None:
        raise _bad("the saved client is authenticated: pass identity= (its long-term key) to from_bytes")
    key = auth.as_identity(given)
    if auth.public_bytes(key) != public:
        raise _bad("the identity key passed does not match the saved client's public key")
    return key


def _rng(state: Any) -> np.random.Generator:
    d = _dict(state, "rng")
    name = d.get("bit_generator")
    if name not in _RNGS or set(d) != {"bit_generator", "state", "has_uint32", "uinteger"}:
        raise _bad(f"rng must be a saved {' or '.join(_RNGS)} state")
    inner = _dict(d["state"], "rng.state")
    if set(inner) != {"state", "inc"} or not all(_is_int(v) and 0 <= v < 1 << 128 for v in inner.values()):
        raise _bad("rng.state must hold 128-bit 'state' and 'inc'")
    if d["has_uint32"] not in (0, 1) or not _is_int(d["uinteger"]) or not 0 <= d["uinteger"] < 1 << 32:
        raise _bad("rng.has_uint32 / rng.uinteger out of range")
    bitgen = getattr(np.random, name)()
    bitgen.state = d
    return np.random.Generator(bitgen)


def _pairs(items: Any, what: str, *, allowed: Any, value: Callable[[Any, str], bytes]) -> dict[str, tuple[bytes, bytes]]:
    out: dict[str, tuple[bytes, bytes]] = {}
    for item in _list(items, what):
        entry = _list(item, what)
        if len(entry) != 3:
            raise _bad(f"{what} entries are [id, blob, blob]")
        cid = _str(entry[0], what)
        if cid not in allowed or cid in out:
            raise _bad(f"{what}: {cid!r} is not a (distinct) neighbour")
        out[cid] = (value(entry[1], f"{what} of {cid!r}"), value(entry[2], f"{what} of {cid!r}"))
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise _bad(f"{what} must be a string, got {type(v).__name__}")
    return v


def _dict(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise _bad(f"{what} must be an object, got {type(v).__name__}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise _bad(f"{what} must be a list, got {type(v).__name__}")
    return v


__all__ = ["FORMAT", "MAGIC", "client_from_bytes", "client_to_bytes", "write_private"]
