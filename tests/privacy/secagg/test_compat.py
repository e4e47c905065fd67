"""The deployment path before it passes identities, and the session's new bookkeeping.

A deployed node builds ``SecAggClient(client_id, rng=...)`` (no config, no identity) and
keeps it on disk between messages; the server side is a ``SecAggSession`` subclass that
goes from ``masked_input`` straight to ``unmasking``. That keeps working (semi-honest,
with a warning), while the simulator's own sessions sign and run the consistency check.
"""

import dataclasses

import numpy as np
import pytest

from fedlm.config.secagg import PHASES, SecAggConfig
from fedlm.privacy.secagg import SecAggClient, run_round
from fedlm.privacy.secagg.errors import InsecureSecAggWarning
from fedlm.privacy.secagg.identity import generate_identity
from fedlm.privacy.secagg.messages import AdvertiseKeys, UnmaskRequest, decode
from fedlm.privacy.secagg.quantize import sum_error_bound
from fedlm.privacy.secagg.session import SecAggSession

CFG = SecAggConfig(seed=3)


def test_unwired_deployment_flow_runs_the_semi_honest_protocol():
    ids, length, seed = tuple(f"c{i}" for i in range(5)), 32, 3
    session = SecAggSession(ids, vector_len=length, config=CFG, seed=seed)  # as RemoteSession does
    server = session.server
    disk: dict[str, bytes] = {}
    with pytest.warns(InsecureSecAggWarning):
        for i, c in enumerate(ids):  # ClientStore.fresh
            disk[c] = SecAggClient(c, rng=np.random.default_rng([seed, i])).to_bytes()

    def step(cid, data, call):  # client_step: load, step, save; bytes both ways
        client = SecAggClient.from_bytes(disk[cid])
        reply = call(client, decode(data))
        disk[cid] = client.to_bytes()
        return reply.to_bytes()

    down = session._server_call("advertise_keys", lambda _: server.setup(), [])
    for phase, action, call in (
        ("advertise_keys", server.advertise_keys, lambda c, m: c.advertise_keys(m)),
        ("share_keys", server.share_keys, lambda c, m: c.share_keys(m)),
    ):
        ups = [decode(step(c, m.to_bytes(), call)) for c, m in down.items()]
        down = session._server_call(phase, action, ups)
    vectors = {c: np.linspace(-0.15, 0.15, length) * (i + 1) for i, c in enumerate(ids)}
    masked = [decode(step(c, m.to_bytes(), lambda cl, msg, c=c: cl.masked_input(msg, vectors[c]))) for c, m in down.items()]
    requests = session._server_call("masked_input", server.masked_input, masked)
    assert server.authenticated is False and server.phase == "unmasking"
    assert all(isinstance(m, UnmaskRequest) and not m.signatures for m in requests.values())
    answers = [decode(step(c, m.to_bytes(), lambda cl, msg: cl.unmask(msg))) for c, m in requests.items()]
    result = session._server_call("unmasking", server.unmask, answers)
    assert np.abs(result.values - sum(vectors.values())).max() <= sum_error_bound(5, bits=16, clip=1.0)
    assert server.dropped["consistency"] == [] and "consistency" in PHASES


def test_wired_deployment_flow_signs_and_checks_consistency():
    """What secagg_remote.py does once wired: identity + enrolment + config per node, bytes on disk."""
    ids, length, seed = tuple(f"c{i}" for i in range(5)), 16, 4
    keys = {c: generate_identity() for c in ids}  # in a deployment: one per node, enrolled out of band
    known = {c: k.public_key().public_bytes_raw() for c, k in keys.items()}
    session = SecAggSession(ids, vector_len=length, config=CFG, seed=seed)
    server, disk = session.server, {}
    for i, c in enumerate(ids):
        client = SecAggClient(c, rng=np.random.default_rng([seed, i]), config=CFG, identity=keys[c],
                              known_identities=known)
        disk[c] = client.to_bytes()

    def round_trip(down, call=lambda cl, m: cl.handle(m)):
        ups = []
        for c, m in down.items():
            client = SecAggClient.from_bytes(disk[c], identity=keys[c])
            ups.append(decode(call(client, decode(m.to_bytes())).to_bytes()))
            disk[c] = client.to_bytes()
        return ups

    down = server.setup()
    for phase, step in (("advertise_keys", server.advertise_keys), ("share_keys", server.share_keys)):
        down = session._server_call(phase, step, round_trip(down))
    vectors = {c: np.full(length, 0.02 * (i + 1)) for i, c in enumerate(ids)}
    masked = round_trip(down, lambda cl, m: cl.masked_input(m, vectors[cl.client_id]))
    down = session._server_call("masked_input", server.masked_input, masked)
    assert server.authenticated is True and server.phase == "consistency"  # the new round trip
    down = session._server_call("consistency", server.consistency, round_trip(down))
    result = session._server_call("unmasking", server.unmask, round_trip(down))
    assert np.abs(result.values - sum(vectors.values())).max() <= sum_error_bound(5, bits=16, clip=1.0)


def test_simulated_rounds_sign_and_count_the_consistency_phase():
    vecs = {f"c{i}": np.full(20, 0.01 * i) for i in range(6)}
    got, stats = run_round(vecs, config=CFG)
    assert stats["authenticated"] is True
    ph = stats["phases"]["consistency"]
    assert ph["bytes_up"] >= 6 * 64 and ph["bytes_down"] > 0 and ph["dropouts"] == 0
    assert np.abs(got - sum(vecs.values())).max() <= sum_error_bound(6, bits=16, clip=1.0)


def test_session_takes_given_identities_and_refuses_missing_ones():
    ids = ("a", "b", "c", "d")
    keys = {c: generate_identity() for c in ids}
    session = SecAggSession(ids, vector_len=4, config=CFG, seed=1, identities=keys)
    assert all(session.clients[c].authenticated for c in ids)
    with pytest.raises(ValueError, match="no key for cohort members"):
        SecAggSession(ids, vector_len=4, config=CFG, seed=1, identities={"a": keys["a"]})


def test_an_unsigned_client_in_a_signed_round_is_dropped(hand_round):
    r = hand_round(6, length=8, config=CFG)
    adv = r.advertise()
    a = adv["c5"]
    adv["c5"] = AdvertiseKeys(a.round_id, a.client, a.enc_public, a.mask_public, a.seed_commitment)
    r.share()
    assert r.server.authenticated is True and r.server.dropped["advertise_keys"] == ["c5"]
    r.mask(), r.unmask()
    result = r.server.unmask(r.answers.values())
    assert result.survivors == ("c0", "c1", "c2", "c3", "c4")


def test_screen_splits_a_batch_without_changing_state(hand_round):
    r = hand_round(4, length=4, config=CFG)
    adv = list(r.advertise().values())
    stranger = dataclasses.replace(adv[0], client="zz")
    ok, bad = r.server.screen([adv[0], adv[0], stranger, dataclasses.replace(adv[1], round_id=9), *adv[2:]])
    assert [m.client for m in ok] == ["c0", "c2", "c3"]
    assert bad == [("c0", "replay"), ("zz", "not_member"), ("c1", "wrong_round")]
    assert r.server.phase == "advertise_keys"


def test_server_with_an_enrolment_map_verifies_signatures_itself(hand_round):
    r = hand_round(4, length=4, config=CFG)
    from fedlm.privacy.secagg import SecAggServer

    server = SecAggServer(r.ids, vector_len=4, config=CFG, graph_seed=7, identities=r.enrolled)
    server.setup()
    adv = r.advertise()
    forged = dataclasses.replace(adv["c1"], signature=adv["c2"].signature)
    ok, bad = server.screen([adv["c0"], forged])
    assert [m.client for m in ok] == ["c0"] and bad == [("c1", "bad_signature")]
