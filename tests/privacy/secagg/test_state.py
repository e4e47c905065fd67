"""SecAggClient.to_bytes / from_bytes: JSON + raw keys, strict, never pickle; 0600 files."""

import json
import os
import stat
import struct

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import FedlmError
from fedlm.privacy.secagg import SecAggClient, SecAggError
from fedlm.privacy.secagg.identity import generate_identity
from fedlm.privacy.secagg.quantize import quantize
from fedlm.privacy.secagg.state import MAGIC, write_private

CFG = SecAggConfig(seed=0)
PREFIX = struct.Struct(">6sBI")


def _reload(r):
    """Every client goes to bytes and back, as a deployed node does between messages."""
    for c in r.ids:
        key = r.identities[c] if r.clients[c].authenticated else None
        r.clients[c] = SecAggClient.from_bytes(r.clients[c].to_bytes(), identity=key)


@pytest.mark.parametrize("authenticated", [True, False])
def test_a_round_reloaded_after_every_phase_sums_exactly(hand_round, authenticated):
    r = hand_round(5, length=12, config=CFG, authenticated=authenticated)
    _reload(r)
    r.advertise(), _reload(r)
    r.share(), _reload(r)
    r.mask(), _reload(r)
    if authenticated:
        r.sign(), _reload(r)
    r.unmask(), _reload(r)
    result = r.server.unmask(r.answers.values())
    want = sum(
        quantize(r.vectors[c], bits=16, clip=1.0, rng=np.random.default_rng(i)).astype(np.int64)
        for i, c in enumerate(r.ids)
    )
    assert np.array_equal(result.total.astype(np.int64), want)  # rng state survived too
    assert all(c.phase == "done" for c in r.clients.values())


def test_every_config_survives_the_round_trip(hand_round):
    cfg = SecAggConfig(neighbours=4, threshold=3, corrupt_fraction=0.1, max_weight=3, phase_dropout={"consistency": 0.1})
    r = hand_round(12, length=4, config=cfg)
    r.advertise()
    back = SecAggClient.from_bytes(r.clients["c3"].to_bytes(), identity=r.identities["c3"])
    assert back.config == cfg and back.phase == "advertise_keys"


def _saved(hand_round, phase="masked_input"):
    r = hand_round(5, length=4, config=CFG)
    r.advertise(), r.share()
    if phase == "masked_input":
        r.mask()
    return r, r.clients["c0"].to_bytes()


def _split(data):
    _, _, size = PREFIX.unpack_from(data)
    return json.loads(data[PREFIX.size : PREFIX.size + size]), data[PREFIX.size + size :]


def _join(header, blobs):
    text = json.dumps(header).encode()
    return PREFIX.pack(MAGIC, 1, len(text)) + text + blobs


def test_format_is_json_plus_raw_keys(hand_round):
    r, data = _saved(hand_round)
    assert data.startswith(MAGIC)
    header, blobs = _split(data)
    assert header["phase"] == "masked_input" and header["client_id"] == "c0"
    assert sum(header["blobs"]) == len(blobs)
    assert r.clients["c0"]._mask_sk in blobs  # the raw key bytes, not pickled objects
    # the long-term identity key is not in the file
    assert r.identities["c0"].private_bytes_raw() not in data


def _edits():
    yield "magic", lambda h, b: (None, b"XXXXXX" + b"\x01")
    yield "unknown key", lambda h, b: ({**h, "extra": 1}, b)
    yield "missing key", lambda h, b: ({k: v for k, v in h.items() if k != "held"}, b)
    yield "phase type", lambda h, b: ({**h, "phase": 3}, b)
    yield "phase name", lambda h, b: ({**h, "phase": "leaked"}, b)
    yield "phase vs contents", lambda h, b: ({**h, "phase": "setup"}, b)
    yield "bool as index", lambda h, b: ({**h, "setup": True}, b)
    yield "blob used twice", lambda h, b: ({**h, "secrets": {**h["secrets"], "seed": h["secrets"]["enc_sk"]}}, b)
    yield "short key", lambda h, b: ({**h, "blobs": [*h["blobs"][:-1], h["blobs"][-1] - 1]}, b[:-1])
    yield "trailing bytes", lambda h, b: (h, b + b"\x00")
    yield "truncated", lambda h, b: (h, b[:-5])
    yield "held for a stranger", lambda h, b: ({**h, "held": [["zz", *h["held"][0][1:]], *h["held"][1:]]}, b)
    yield "survivor outside cohort", lambda h, b: ({**h, "survivors": ["zz"]}, b)
    yield "rng kind", lambda h, b: ({**h, "rng": {**h["rng"], "bit_generator": "MT19937"}}, b)
    yield "rng state", lambda h, b: ({**h, "rng": {**h["rng"], "state": {"state": -1, "inc": 1}}}, b)
    yield "config", lambda h, b: ({**h, "config": {**h["config"], "threshold": 1}}, b)
    yield "header not an object", lambda h, b: ([], b)


@pytest.mark.parametrize("name,edit", list(_edits()), ids=[n for n, _ in _edits()])
def test_every_field_is_validated(hand_round, name, edit):
    r, data = _saved(hand_round)
    header, blobs = _split(data)
    new_header, new_blobs = edit(header, blobs)
    bad = new_blobs if new_header is None else _join(new_header, new_blobs)
    with pytest.raises(SecAggError) as e:
        SecAggClient.from_bytes(bad, identity=r.identities["c0"])
    assert e.value.reason == "bad_state"


def test_identity_must_be_given_back_and_match(hand_round):
    r, data = _saved(hand_round)
    for key in (None, generate_identity(), b"\x00" * 31):
        with pytest.raises(FedlmError):
            SecAggClient.from_bytes(data, identity=key)
    back = SecAggClient.from_bytes(data, identity=r.identities["c0"].private_bytes_raw())
    assert back.phase == "masked_input" and back.authenticated


def test_random_corruption_only_raises_bad_state(hand_round):
    r, raw = _saved(hand_round)
    rng = np.random.default_rng(0)
    for _ in range(300):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        try:
            SecAggClient.from_bytes(bytes(data), identity=r.identities["c0"])
        except SecAggError as exc:  # anything else is a bug
            assert exc.reason == "bad_state"


def test_write_private_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "secagg_round_1.state"
        write_private(path, b"secret")
        write_private(path, b"secret 2")  # replaces atomically
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret 2"
    assert [p.name for p in tmp_path.iterdir()] == ["secagg_round_1.state"]
