"""Fuzz every SecAgg+ message type through the decoder and both state machines.

Run with ``pytest tests/privacy/secagg/test_message_fuzz.py -o markers=fuzz``.

One genuine, authenticated round (5 clients, every key, share, nonce and identity drawn
from seeded generators, so the messages and hence every mutation are the same on every
run) provides a valid encoding of each message type and a snapshot of the server and of
client c0 in every phase. Each case is a byte-level mutation of a genuine message, a
random but well-typed message built field by field, or random bytes; it is decoded, then
handed to the party that receives it in its phase (downloads to client c0, uploads to
the server together with the other clients' genuine uploads, so that an accepted upload
is followed through to the end of the round), and to the other party out of phase. The
only exceptions allowed are fedlm's own (:class:`fedlm.errors.FedlmError`); a state
machine that accepted a message is restored from its snapshot before the next case.
"""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import FedlmError
from fedlm.privacy.secagg import SecAggClient, SecAggServer, crypto, shamir
from fedlm.privacy.secagg.identity import enrolment
from fedlm.privacy.secagg.messages import (
    MESSAGE_TYPES,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    MaskedInput,
    Message,
    NeighbourKeys,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode,
)

pytestmark = pytest.mark.fuzz

CASES_PER_TYPE = 2_600  # x 10 message types = 26,000, plus RANDOM_CASES raw byte strings
RANDOM_CASES = 1_000
LENGTH = 8
CFG = SecAggConfig(seed=0)
IDS = ("c0", "c1", "c2", "c3", "c4")
DOWN = {Setup: "setup", NeighbourKeys: "advertise_keys", ForwardedShares: "share_keys",
        ConsistencyRequest: "masked_input", UnmaskRequest: "consistency"}
UP = {AdvertiseKeys: "advertise_keys", ShareKeys: "share_keys", MaskedInput: "masked_input",
      ConsistencySignature: "consistency", UnmaskShares: "unmasking"}
SERVER_STEPS = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask")


class _Seeded:
    """Stands in for ``os`` / ``secrets`` in the crypto modules: seeded bytes and integers."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def urandom(self, n: int) -> bytes:
        return self._r.randbytes(n)

    def randbelow(self, n: int) -> int:
        return self._r.randrange(n)


@dataclass
class World:
    """A genuine round: valid messages and snapshots of server and client c0 per phase."""

    identities: dict[str, Ed25519PrivateKey]
    server: dict[str, SecAggServer] = field(default_factory=dict)  # phase -> snapshot
    client: dict[str, bytes] = field(default_factory=dict)  # phase -> c0.to_bytes()
    uploads: dict[str, list[Message]] = field(default_factory=dict)  # phase -> genuine batch
    genuine: dict[type, list[bytes]] = field(default_factory=dict)  # type -> encodings
    pool: dict[str, list[bytes]] = field(default_factory=dict)  # "key", "sig", "share", ...


def _world(monkeypatch: pytest.MonkeyPatch) -> World:
    seeded = _Seeded(2026)
    monkeypatch.setattr(crypto, "os", seeded)
    monkeypatch.setattr(shamir, "secrets", seeded)
    monkeypatch.setattr(crypto, "generate_private_key", lambda: seeded.urandom(32))
    w = World({c: Ed25519PrivateKey.from_private_bytes(seeded.urandom(32)) for c in IDS})
    known = enrolment(w.identities)
    server = SecAggServer(IDS, vector_len=LENGTH, config=CFG, graph_seed=7)
    clients = {c: SecAggClient(c, rng=np.random.default_rng(i), config=CFG, identity=w.identities[c],
                               known_identities=known) for i, c in enumerate(IDS)}
    vectors = {c: np.linspace(-0.5, 0.5, LENGTH) * (i + 1) / 5 for i, c in enumerate(IDS)}
    calls = {"setup": lambda c, m: c.advertise_keys(m), "advertise_keys": lambda c, m: c.share_keys(m),
             "share_keys": lambda c, m: c.masked_input(m, vectors[c.client_id]),
             "masked_input": lambda c, m: c.consistency(m), "consistency": lambda c, m: c.unmask(m)}
    down: dict[str, Message] = server.setup()
    for phase, step in zip(calls, SERVER_STEPS):
        w.client[phase] = clients["c0"].to_bytes()
        ups = [calls[phase](clients[c], m) for c, m in down.items()]
        up_phase = {"setup": "advertise_keys", "advertise_keys": "share_keys", "share_keys": "masked_input",
                    "masked_input": "consistency", "consistency": "unmasking"}[phase]
        w.server[up_phase] = copy.deepcopy(server)
        w.uploads[up_phase] = ups
        for m in (*down.values(), *ups):
            w.genuine.setdefault(type(m), []).append(m.to_bytes())
        out = getattr(server, step)(ups)
        down = out if isinstance(out, dict) else {}
    for m in (*w.uploads["advertise_keys"],):
        w.pool.setdefault("key", []).extend([m.enc_public, m.mask_public, m.seed_commitment])
        w.pool.setdefault("sig", []).append(m.signature)
    w.pool["sig"] += [m.signature for m in w.uploads["consistency"]]
    w.pool["share"] = [raw for m in w.uploads["unmasking"] for _, raw in (*m.seed_shares, *m.key_shares)]
    w.pool["blob"] = [blob for m in w.uploads["share_keys"] for _, blob in m.items]
    return w


# -- case generators -----------------------------------------------------------------------
INTS = [0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 255, 256, 2**16 - 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


def _mutate(data: bytes, rng: random.Random, every: list[bytes]) -> bytes:
    b = bytearray(data)
    op = rng.randrange(12)
    if op == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif op == 2:
        del b[rng.randrange(len(b) + 1):]
    elif op == 3:
        b += rng.randbytes(rng.randint(1, 64))
    elif op == 4:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 16))
    elif op == 5 and b:
        at = rng.randrange(len(b))
        del b[at : at + rng.randint(1, 16)]
    elif op == 6 and len(b) > 8:  # a length or count field set to an interesting value
        width = rng.choice([2, 4, 8])
        at = rng.randrange(len(b) - width + 1)
        value = rng.choice([*INTS, len(b), len(b) - at, rng.randrange(1 << 16)]) % (1 << (8 * width))
        b[at : at + width] = value.to_bytes(width, "big")
    elif op == 7:  # splice two genuine messages
        other = rng.choice(every)
        b = b[: rng.randrange(len(b) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif op == 8 and len(b) > 1:
        b[1] = rng.randrange(16)  # another (or an unknown) message type over this body
    elif op == 9 and len(b) >= 10:
        b[2:10] = rng.choice([0, 2, 2**64 - 1, rng.randrange(2**64)]).to_bytes(8, "big")
    elif op == 10 and b:
        at = rng.randrange(len(b))
        b[at:at] = b[at : at + rng.randint(1, 32)]  # a repeated field
    else:
        b = b[:2] + rng.randbytes(rng.randrange(200))
    return bytes(b)


def _ids(rng: random.Random, n: int | None = None) -> tuple[str, ...]:
    names = [*IDS, "", "zz", "c0\x00", "ü", "c" * 300]
    n = rng.randrange(8) if n is None else n
    if rng.random() < 0.5:
        return tuple(rng.sample(IDS, min(n, len(IDS))))
    return tuple(rng.choice(names) for _ in range(n))


def _random_message(kind: type, rng: random.Random, w: World) -> Message:
    """A well-typed message with random field values (an id, a key, a count out of place)."""
    rid = rng.choice([1, 1, 1, 0, 2, 2**64 - 1])
    who = rng.choice([*IDS, "c0", "c0", "zz"])
    key = lambda: rng.choice([*w.pool["key"], rng.randbytes(32), bytes(32), b"\x01" + bytes(31)])  # noqa: E731
    sig = lambda: rng.choice([*w.pool["sig"], rng.randbytes(64), bytes(64)])  # noqa: E731
    if kind is Setup:
        f = [rng.choice([CFG.clip_range, 0.0, -1.0, float("nan"), float("inf"), 1e300, 1e-300])]
        return Setup(rid, who, rng.choice([IDS, _ids(rng)]), rng.choice(INTS), rng.choice(INTS[:12]),
                     rng.choice(INTS[:12]), rng.choice([LENGTH, *INTS]), rng.choice([32, *INTS[:15]]),
                     rng.choice([16, *INTS[:15]]), f[0], rng.choice([1, *INTS]))
    if kind is AdvertiseKeys:
        return AdvertiseKeys(rid, who, key(), key(), key(), rng.choice([sig(), b""]))
    if kind is NeighbourKeys:
        return NeighbourKeys(rid, who, tuple((c, key(), key(), rng.choice([sig(), b""])) for c in _ids(rng)))
    if kind in (ShareKeys, ForwardedShares):
        blobs = [*w.pool["blob"], rng.randbytes(rng.choice([0, 12, 115, 131, 132, 133]))]
        return kind(rid, who, tuple((c, rng.choice(blobs)) for c in _ids(rng)))
    if kind is MaskedInput:
        m = rng.choice([32, 32, 1, 8, 16, 24, 33, 64])
        dtype = crypto.mask_dtype(m)
        size = rng.choice([LENGTH + 1, LENGTH + 1, 0, LENGTH, LENGTH + 2])
        values = np.frombuffer(rng.randbytes(size * dtype.itemsize), dtype=dtype).copy()
        if rng.random() < 0.5:
            values[-1:] = rng.choice([0, 1, 5, 2**31, int(np.iinfo(dtype).max)])
        return MaskedInput(rid, who, m, values)
    if kind is ConsistencyRequest:
        return ConsistencyRequest(rid, who, rng.choice([IDS, _ids(rng)]))
    if kind is ConsistencySignature:
        return ConsistencySignature(rid, who, sig())
    if kind is UnmaskRequest:
        sigs = tuple((c, sig()) for c in _ids(rng))
        return UnmaskRequest(rid, who, rng.choice([IDS, _ids(rng)]), sigs)
    shares = [*w.pool["share"], rng.randbytes(rng.choice([0, 51, 52, 53])), bytes(52)]
    pairs = lambda: tuple((c, rng.choice(shares)) for c in _ids(rng))  # noqa: E731
    return UnmaskShares(rid, who, pairs(), pairs())


# -- delivery -----------------------------------------------------------------------------
@dataclass
class Counts:
    cases: int = 0
    decoded: int = 0
    accepted: int = 0


class Harness:
    """Live server and client per phase; restored from the snapshots after any acceptance."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.servers = {p: copy.deepcopy(s) for p, s in w.server.items()}
        self.clients = {p: self._client(p) for p in w.client}
        self.counts = Counts()

    def _client(self, phase: str) -> SecAggClient:
        return SecAggClient.from_bytes(self.w.client[phase], identity=self.w.identities["c0"])

    def deliver(self, msg: Message) -> None:
        kind = type(msg)
        if kind in DOWN:
            self._to_client(DOWN[kind], msg)
            self._to_server(next(iter(self.servers)), msg)  # out of phase there
        else:
            self._to_server(UP[kind], msg)
            self._to_client("setup", msg)  # out of phase there

    def _to_client(self, phase: str, msg: Message) -> None:
        client = self.clients[phase]
        calls = {"setup": client.advertise_keys, "advertise_keys": client.share_keys,
                 "masked_input": client.consistency, "consistency": client.unmask}
        try:
            if phase == "share_keys":
                client.masked_input(msg, np.full(LENGTH, 0.1))  # type: ignore[arg-type]
            else:
                calls[phase](msg)  # type: ignore[arg-type]
            self.counts.accepted += 1
        except FedlmError:
            pass
        if client.phase != phase:
            self.clients[phase] = self._client(phase)

    def _to_server(self, phase: str, msg: Message) -> None:
        server = self.servers[phase]
        with contextlib.suppress(FedlmError):
            server.check(msg)
        batch = [msg, *(m for m in self.w.uploads[phase] if m.client != msg.client)]
        try:
            getattr(server, SERVER_STEPS[list(self.servers).index(phase)])(batch)
            self.counts.accepted += 1
            self._finish(server, phase)
        except FedlmError:
            pass
        if server.phase != phase:
            self.servers[phase] = copy.deepcopy(self.w.server[phase])

    def _finish(self, server: SecAggServer, phase: str) -> None:
        """Run the rest of the round on genuine uploads: any failure must be a fedlm error."""
        phases = list(self.servers)
        for later in phases[phases.index(phase) + 1 :]:
            getattr(server, SERVER_STEPS[phases.index(later)])(self.w.uploads[later])


def _feed(h: Harness, data: bytes) -> None:
    h.counts.cases += 1
    try:
        msg = decode(data)
    except FedlmError:
        return
    h.counts.decoded += 1
    h.deliver(msg)


@pytest.mark.parametrize("kind", list(MESSAGE_TYPES.values()), ids=lambda k: k.__name__)
def test_fuzz_message_type(monkeypatch, kind):
    w = _world(monkeypatch)
    h = Harness(w)
    rng = random.Random(f"fedlm-secagg-fuzz-{kind.__name__}")
    every = [b for bs in w.genuine.values() for b in bs]
    for i in range(CASES_PER_TYPE):
        if i % 20 < 11:
            _feed(h, _mutate(rng.choice(w.genuine[kind]), rng, every))
            continue
        try:
            msg = _random_message(kind, rng, w)
        except FedlmError:  # refused at construction (e.g. a key of the wrong size)
            h.counts.cases += 1
            continue
        try:
            data = msg.to_bytes()
        except FedlmError:  # a field that does not fit its wire type (e.g. bits=256)
            data = b""
        if i % 20 < 17:
            h.counts.cases += 1
            h.deliver(msg)  # the object itself, as an in-process transport hands it over
            _feed(h, data)
        else:
            _feed(h, _mutate(data, rng, every))
    assert h.counts.cases >= CASES_PER_TYPE  # an object and its encoding count as two
    assert h.counts.decoded > CASES_PER_TYPE // 5, "the mutations must reach the state machines"
    assert h.counts.accepted > 0 or kind is NeighbourKeys


def test_fuzz_random_bytes(monkeypatch):
    h = Harness(_world(monkeypatch))
    rng = random.Random("fedlm-secagg-fuzz-bytes")
    types = list(MESSAGE_TYPES)
    for _ in range(RANDOM_CASES):
        head = bytes([rng.choice([2, 2, 2, 1, 0, 255]), rng.choice([*types, 0, 11, 255])])
        _feed(h, head + rng.randbytes(rng.randrange(300)))
    assert h.counts.cases == RANDOM_CASES


def test_fuzz_case_count_covers_every_type():
    assert len(MESSAGE_TYPES) == 10
    assert CASES_PER_TYPE * len(MESSAGE_TYPES) + RANDOM_CASES >= 25_000
