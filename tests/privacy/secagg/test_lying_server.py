"""A server that lies: low threshold or degree, swapped or replayed keys, split survivor sets.

Each attack is first shown to work against what the review found (a client that takes the
server's word), then refused by the client as it is now.
"""

import dataclasses
import warnings

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggAborted, SecAggClient, SecAggError, crypto, shamir
from fedlm.privacy.secagg.client import SHARE_BYTES, mask_sign, share_aad
from fedlm.privacy.secagg.errors import InsecureSecAggWarning
from fedlm.privacy.secagg.identity import generate_identity, keys_payload, setup_digest, sign
from fedlm.privacy.secagg.messages import (
    ConsistencyRequest,
    NeighbourKeys,
    UnmaskRequest,
)
from fedlm.privacy.secagg.quantize import dequantize, step_size

CFG = SecAggConfig(seed=0)


def _reason(call, *args, **kwargs):
    with pytest.raises(SecAggError) as e:
        call(*args, **kwargs)
    return e.value.reason


def _weak_round(hand_round, monkeypatch, n):
    """A round whose server sends t = 2 and whose clients skip the safety check (the review's finding)."""
    monkeypatch.setattr("fedlm.privacy.secagg.server_checks.min_safe_threshold", lambda k, **_: 2)
    monkeypatch.setattr("fedlm.privacy.secagg.safety.min_safe_threshold", lambda k, **_: 2)
    weak = SecAggConfig.model_construct(**{**CFG.model_dump(), "threshold": 2, "neighbours": n - 1})
    return hand_round(n, length=16, config=weak, authenticated=False)


def _split_view_attack(r, target, corrupt=()):
    """Tell half of target's honest neighbours it survived and the rest it dropped; unmask y_target.

    ``corrupt`` neighbours collude with the server and hand over both of their shares.
    """
    r.advertise(), r.share(), r.mask()
    r.server.masked_input(r.masked.values())
    near = sorted(r.server.neighbours[target])
    honest = [c for c in near if c not in corrupt]
    alive, dead = honest[: len(honest) // 2], honest[len(honest) // 2 :]
    everyone, without = tuple(r.ids), tuple(c for c in r.ids if c != target)
    seed_shares = [
        dict(r.clients[c].unmask(UnmaskRequest(1, c, everyone)).seed_shares)[target] for c in alive
    ]
    key_shares = [
        dict(r.clients[c].unmask(UnmaskRequest(1, c, without)).key_shares)[target] for c in dead
    ]
    for c in corrupt:  # (share of s_target, share of b_target), straight from the colluder's state
        key_share, seed_share = r.clients[c]._held[target]
        key_shares.append(key_share)
        seed_shares.append(seed_share)
    t = r.server.threshold
    b = shamir.reconstruct([shamir.Share.from_bytes(s, secret_len=32) for s in seed_shares], threshold=t, secret_len=32)
    s = shamir.reconstruct([shamir.Share.from_bytes(s, secret_len=32) for s in key_shares], threshold=t, secret_len=32)
    y = r.masked[target].values.copy()
    streams = [(b, True)]
    for j in near:  # the target added sign(target, j) * PRG(s_tj); take it out
        seed = crypto.agree(s, r.adv[j].mask_public, label=b"mask", round_id=1)
        streams.append((seed, mask_sign(target, j, order=r.server.index) > 0))
    crypto.apply_streams(y, streams)
    return dequantize(y[:-1], bits=16, clip=1.0)


def test_low_threshold_attack_recovers_an_input_when_clients_take_the_servers_word(hand_round, monkeypatch):
    r = _weak_round(hand_round, monkeypatch, 5)
    assert r.server.threshold == 2
    got = _split_view_attack(r, "c0")
    assert np.abs(got - r.vectors["c0"]).max() <= step_size(bits=16, clip=1.0) * 1.01


@pytest.mark.parametrize("with_config", [True, False])
def test_clients_refuse_a_threshold_below_their_safe_minimum(hand_round, with_config):
    r = hand_round(10, length=4, config=CFG)  # k = 9, c = floor(0.2 * 9) = 1, t_min = 6
    assert r.server.threshold == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureSecAggWarning)
        client = SecAggClient("c0", config=CFG if with_config else None)
    for t in (2, 5):
        lie = dataclasses.replace(r.setup["c0"], threshold=t)
        with pytest.raises(SecAggError, match=f"threshold={t} is below 6") as e:
            client.advertise_keys(lie)
        assert e.value.reason == "unsafe"
    assert client.phase == "setup"  # nothing was made, nothing is sent
    client.advertise_keys(r.setup["c0"])  # the honest Setup goes through


def test_clients_refuse_a_sparse_graph_or_other_quantisation(hand_round):
    r = hand_round(10, length=4, config=CFG)
    c0 = r.clients["c0"]
    sparse = dataclasses.replace(r.setup["c0"], degree=2, threshold=2)
    assert _reason(c0.advertise_keys, sparse) == "unsafe"  # default degree at n = 10 is 9
    for field, value in (("clip", 100.0), ("max_weight", 1000), ("bits", 8)):
        assert _reason(c0.advertise_keys, dataclasses.replace(r.setup["c0"], **{field: value})) == "bad_params"
    assert c0.phase == "setup"


def test_split_view_gets_too_few_shares_at_a_safe_threshold(hand_round):
    r = hand_round(5, length=16, config=CFG, authenticated=False)  # k = 4, t = 3
    with pytest.raises(SecAggError) as e:
        _split_view_attack(r, "c0")  # 2 shares of b_0 and 2 of s_0: below t = 3
    assert e.value.reason == "below_threshold"


@pytest.mark.parametrize("colluders,recovered", [(2, False), (3, True)])
def test_colluders_within_the_bound_do_not_help_and_one_more_does(hand_round, colluders, recovered):
    # n = 10: k = 9, t = 6 (corrupt_fraction 0.2 assumes 1); 2t > k + c holds up to c = 2.
    # Unauthenticated clients (no consistency check), so only the threshold stands in the way.
    r = hand_round(10, length=16, config=CFG, authenticated=False)
    assert (r.server.degree, r.server.threshold) == (9, 6)
    corrupt = tuple(f"c{i}" for i in range(1, 1 + colluders))
    if not recovered:
        with pytest.raises(SecAggError) as e:
            _split_view_attack(r, "c0", corrupt)
        assert e.value.reason == "below_threshold"
        return
    got = _split_view_attack(r, "c0", corrupt)
    assert np.abs(got - r.vectors["c0"]).max() <= step_size(bits=16, clip=1.0) * 1.01


def _swap(msg: NeighbourKeys, who: str, **fields) -> NeighbourKeys:
    names = ("cid", "enc", "mask", "sig")
    entries = [
        tuple({**dict(zip(names, e)), **fields}[n] for n in names) if e[0] == who else e for e in msg.keys
    ]
    return NeighbourKeys(msg.round_id, msg.client, tuple(entries))


def test_swapped_public_key_lets_a_server_read_shares_of_an_unauthenticated_client(hand_round):
    r = hand_round(5, length=4, config=CFG, authenticated=False)
    r.advertise()
    keys = r.server.advertise_keys(r.adv.values())
    evil = crypto.generate_private_key()
    swapped = _swap(keys["c0"], "c1", enc=crypto.public_key(evil))
    blob = dict(r.clients["c0"].share_keys(swapped).items)["c1"]
    aes = crypto.agree(evil, r.adv["c0"].enc_public, label=b"enc", round_id=1)
    plain = crypto.decrypt(aes, blob, aad=share_aad("c0", "c1", round_id=1))
    assert len(plain) == 2 * SHARE_BYTES  # c0's shares of s_0 and b_0 meant for c1, in the clear


def test_clients_refuse_swapped_resigned_or_replayed_keys(hand_round):
    r = hand_round(5, length=4, config=CFG)
    r.advertise()
    keys = r.server.advertise_keys(r.adv.values())
    c0, evil = r.clients["c0"], crypto.generate_private_key()
    evil_pk = crypto.public_key(evil)
    assert _reason(c0.share_keys, _swap(keys["c0"], "c1", enc=evil_pk)) == "bad_signature"
    assert _reason(c0.share_keys, _swap(keys["c0"], "c1", mask=evil_pk)) == "bad_signature"
    # re-signed by the server with an identity of its own: not c1's enrolled key
    digest = setup_digest(r.setup["c0"])
    forged = sign(generate_identity(), keys_payload(digest, "c1", evil_pk, r.adv["c1"].mask_public))
    assert _reason(c0.share_keys, _swap(keys["c0"], "c1", enc=evil_pk, sig=forged)) == "bad_signature"
    assert _reason(c0.share_keys, _swap(keys["c0"], "c1", sig=b"")) == "bad_signature"  # unsigned
    # c1's genuine keys and signature from another round (another Setup) do not verify here
    other = hand_round(5, length=4, config=CFG, graph_seed=8)
    other.identities, other.clients["c1"] = r.identities, SecAggClient(
        "c1", config=CFG, identity=r.identities["c1"], known_identities=r.enrolled
    )
    old = other.clients["c1"].advertise_keys(other.setup["c1"])
    replay = _swap(keys["c0"], "c1", enc=old.enc_public, mask=old.mask_public, sig=old.signature)
    assert _reason(c0.share_keys, replay) == "bad_signature"
    assert c0.phase == "advertise_keys"  # nothing shared under a key the server chose
    c0.share_keys(keys["c0"])  # the honest list still works


def test_a_client_shown_other_parameters_is_rejected_by_its_neighbours(hand_round):
    r = hand_round(5, length=4, config=CFG)
    r.setup["c0"] = dataclasses.replace(r.setup["c0"], graph_seed=123)  # complete graph: still valid
    r.advertise()
    keys = r.server.advertise_keys(r.adv.values())
    assert _reason(r.clients["c1"].share_keys, keys["c1"]) == "bad_signature"  # c0 signed another Setup


def _signed_round(hand_round, n=7):
    r = hand_round(n, length=8, config=CFG)  # n = 7: k = 6, c = 1, t = 4
    r.advertise(), r.share(), r.mask()
    r.server.masked_input(r.masked.values())
    return r


def test_inconsistent_survivor_sets_make_every_client_abort(hand_round):
    r = _signed_round(hand_round)
    assert r.server.threshold == 4
    group_a, group_b = r.ids[:4], r.ids[4:]
    set_a, set_b = tuple(r.ids), tuple(c for c in r.ids if c != "c0")  # "c0 dropped" for group B
    sigs = {c: r.clients[c].consistency(ConsistencyRequest(1, c, set_a)).signature for c in group_a}
    sigs |= {c: r.clients[c].consistency(ConsistencyRequest(1, c, set_b)).signature for c in group_b}
    every = tuple(sigs.items())  # the server forwards every signature it has to everyone
    for group, shown in ((group_a, set_a), (group_b, set_b)):
        for c in group:
            with pytest.raises(SecAggAborted) as e:
                r.clients[c].unmask(UnmaskRequest(1, c, shown, every))
            assert e.value.reason == "inconsistent"
            assert r.clients[c].phase == "aborted" and not r.clients[c]._held


def test_unmask_request_must_match_the_signed_set_and_carry_t_valid_signatures(hand_round):
    r = _signed_round(hand_round)
    check = {c: ConsistencyRequest(1, c, tuple(r.ids)) for c in r.ids}
    signed = {c: r.clients[c].consistency(m) for c, m in check.items()}
    req = r.server.consistency(signed.values())
    c0 = r.clients["c0"]
    lies = [
        dataclasses.replace(req["c0"], survivors=tuple(r.ids[1:])),  # another set than c0 signed
        dataclasses.replace(req["c0"], signatures=req["c0"].signatures[:3]),  # 3 < t = 4
        dataclasses.replace(req["c0"], signatures=(req["c0"].signatures[0],) * 6),  # one signer six times
        dataclasses.replace(  # c0's own signature does not count, nor a forged one
            req["c0"], signatures=(("c0", signed["c0"].signature), *req["c0"].signatures[:3])
        ),
        dataclasses.replace(
            req["c0"], signatures=(*req["c0"].signatures[:3], ("c6", b"\x00" * 64))
        ),
    ]
    for lie in lies:
        c = SecAggClient.from_bytes(c0.to_bytes(), identity=r.identities["c0"])
        with pytest.raises(SecAggAborted) as e:
            c.unmask(lie)
        assert e.value.reason == "inconsistent"
    ans = c0.unmask(req["c0"])
    assert len(ans.seed_shares) == 6


def test_a_server_that_skips_the_consistency_check_gets_nothing(hand_round):
    r = _signed_round(hand_round)
    c0 = r.clients["c0"]
    assert _reason(c0.unmask, UnmaskRequest(1, "c0", tuple(r.ids))) == "out_of_phase"
    with pytest.raises(SecAggAborted) as e:  # a survivor set below t: refused before signing
        c0.consistency(ConsistencyRequest(1, "c0", ("c0", "c1", "c2")))
    assert e.value.reason == "below_threshold"
