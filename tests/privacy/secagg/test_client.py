import dataclasses

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggAborted, SecAggClient, SecAggError
from fedlm.privacy.secagg.errors import InsecureSecAggWarning
from fedlm.privacy.secagg.messages import (
    ConsistencyRequest,
    ForwardedShares,
    NeighbourKeys,
    UnmaskRequest,
)

CFG = SecAggConfig(seed=0)
# chi-square critical values at p = 1e-6 for 63 degrees of freedom (64 bins)
CHI2_63_CRITICAL = 131.37


def _reason(call, *args, **kwargs):
    with pytest.raises(SecAggError) as e:
        call(*args, **kwargs)
    return e.value.reason


def _chi_square(values, bins=64):
    counts = np.bincount(values, minlength=bins).astype(np.float64)
    expected = values.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_masked_vector_is_uniform_mod_2_to_the_m(hand_round):
    r = hand_round(3, length=32_768, config=CFG)
    # Constant input: all the spread of the uploaded values comes from the masks.
    r.vectors = {c: np.zeros(32_768) for c in r.ids}
    r.advertise(), r.share()
    y = r.mask()["c0"].values[:-1].astype(np.uint64)
    assert _chi_square((y >> np.uint64(26)).astype(np.int64)) < CHI2_63_CRITICAL  # top 6 bits
    assert _chi_square((y & np.uint64(63)).astype(np.int64)) < CHI2_63_CRITICAL  # low 6 bits
    # Control: the unmasked quantised input fails the same test by a huge margin.
    plain = np.full(32_768, 32_767, np.int64) + np.random.default_rng(0).integers(0, 2, 32_768)
    assert _chi_square(plain & 63) > 100 * CHI2_63_CRITICAL


def test_out_of_phase_and_addressing(hand_round):
    r = hand_round(3, length=4, config=CFG)
    c0 = r.clients["c0"]
    assert _reason(c0.share_keys, NeighbourKeys(1, "c0", ())) == "out_of_phase"
    assert _reason(c0.advertise_keys, r.setup["c1"]) == "not_member"  # addressed to c1
    with pytest.warns(InsecureSecAggWarning, match="semi-honest"):
        outsider = SecAggClient("zz")
    assert (
        _reason(outsider.advertise_keys, dataclasses.replace(r.setup["c0"], client="zz"))
        == "not_member"
    )
    r.advertise()
    assert _reason(c0.advertise_keys, r.setup["c0"]) == "out_of_phase"  # a second setup
    keys = r.server.advertise_keys(r.adv.values())
    assert _reason(c0.share_keys, dataclasses.replace(keys["c0"], round_id=9)) == "wrong_round"


def test_bad_neighbour_lists(hand_round):
    cfg = SecAggConfig(neighbours=4, seed=0)
    r = hand_round(12, length=4, config=cfg)
    r.advertise()
    keys = r.server.advertise_keys(r.adv.values())["c0"]
    c0 = r.clients["c0"]
    stranger = next(c for c in r.ids if c != "c0" and c not in r.server.neighbours["c0"])
    extra = NeighbourKeys(1, "c0", (*keys.keys, (stranger, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64)))
    assert _reason(c0.share_keys, extra) == "not_member"
    assert _reason(c0.share_keys, NeighbourKeys(1, "c0", (*keys.keys, keys.keys[0]))) == "replay"
    with pytest.raises(SecAggAborted) as e:  # t = 3 of 4 neighbours; only 2 listed
        c0.share_keys(NeighbourKeys(1, "c0", keys.keys[:2]))
    assert e.value.reason == "below_threshold"


def test_tampered_replayed_and_misrouted_shares(hand_round):
    r = hand_round(4, length=4, config=CFG)
    r.advertise(), r.share()
    fwd = r.server.share_keys(r.shares.values())["c0"]
    c0, x = r.clients["c0"], r.vectors["c0"]
    (s1, b1), (s2, b2) = fwd.items[0], fwd.items[1]
    flipped = b1[:20] + bytes([b1[20] ^ 1]) + b1[21:]
    assert (
        _reason(c0.masked_input, ForwardedShares(1, "c0", ((s1, flipped), *fwd.items[1:])), x)
        == "decrypt_failed"
    )
    swapped = ForwardedShares(1, "c0", ((s1, b2), (s2, b1), *fwd.items[2:]))
    assert _reason(c0.masked_input, swapped, x) == "decrypt_failed"  # AAD names the true sender
    assert (
        _reason(c0.masked_input, ForwardedShares(1, "c0", (*fwd.items, fwd.items[0])), x)
        == "replay"
    )
    assert _reason(c0.masked_input, ForwardedShares(1, "c0", ((s1, b1[:-1]),)), x) == "wrong_size"
    assert _reason(c0.masked_input, ForwardedShares(1, "c0", (("zz", b1),)), x) == "not_member"
    assert _reason(c0.masked_input, fwd, np.zeros(5)) == "wrong_size"
    assert _reason(c0.masked_input, fwd, x, weight=2) == "bad_params"  # max_weight is 1
    assert c0.phase == "share_keys"  # nothing was consumed by the rejected messages
    c0.masked_input(fwd, x)


@pytest.mark.parametrize("authenticated", [True, False])
def test_unmask_reveals_one_share_per_neighbour_once(hand_round, authenticated):
    r = hand_round(4, length=4, config=CFG, authenticated=authenticated)
    r.advertise(), r.share(), r.mask(skip=frozenset({"c3"}))
    first = r.server.masked_input(r.masked.values())
    c0 = r.clients["c0"]
    if authenticated:  # c0 signs only a set that lists it, then unmasks for that set
        assert _reason(c0.consistency, ConsistencyRequest(1, "c0", ("c1", "c2"))) == "not_member"
        signed = {c: r.clients[c].consistency(m) for c, m in first.items()}
        req = r.server.consistency(signed.values())["c0"]
    else:
        assert _reason(c0.unmask, UnmaskRequest(1, "c0", ("c1", "c2"))) == "not_member"  # c0 omitted
        req = first["c0"]
    ans = c0.unmask(req)
    assert [c for c, _ in ans.seed_shares] == ["c1", "c2"]
    assert [c for c, _ in ans.key_shares] == ["c3"]
    # A second request, e.g. claiming c1 dropped after all, gets nothing.
    assert _reason(c0.unmask, UnmaskRequest(1, "c0", ("c0", "c2"))) == "out_of_phase"


@pytest.mark.parametrize("authenticated", [True, False])
def test_client_refuses_a_split_survivor_set(hand_round, authenticated):
    cfg = SecAggConfig(neighbours=2, threshold=2, seed=0)  # a ring: every client has 2 neighbours
    r = hand_round(6, length=4, config=cfg, authenticated=authenticated)
    r.advertise(), r.share(), r.mask()
    ring = r.server.neighbours
    me = "c0"
    a, b = sorted(ring[me])
    far = {c for c in r.ids if c not in (me, a, b)}
    opposite = next(c for c in far if ring[c] <= far)  # the ring node touching neither a nor b
    claimed = tuple(c for c in r.ids if c in {me, a, b, opposite})
    with pytest.raises(SecAggAborted) as e:  # {c0, a, b} and {opposite} share no edge
        if authenticated:
            r.clients[me].consistency(ConsistencyRequest(1, me, claimed))
        else:
            r.clients[me].unmask(UnmaskRequest(1, me, claimed))
    assert e.value.reason == "disconnected"
    assert r.clients[me].phase == "aborted"


def test_client_rejects_parameters_without_headroom(hand_round):
    r = hand_round(3, length=4, config=CFG)
    tight = dataclasses.replace(r.setup["c0"], modulus_bits=16)
    assert _reason(r.clients["c0"].advertise_keys, tight) == "bad_params"
    # a threshold below the safe minimum is refused as unsafe, one above the degree as bad
    assert (
        _reason(r.clients["c0"].advertise_keys, dataclasses.replace(r.setup["c0"], threshold=1))
        == "unsafe"
    )
    assert (
        _reason(r.clients["c0"].advertise_keys, dataclasses.replace(r.setup["c0"], threshold=3))
        == "bad_params"
    )
