import dataclasses
import itertools

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggAborted, SecAggError, SecAggServer
from fedlm.privacy.secagg.graph import is_connected
from fedlm.privacy.secagg.messages import AdvertiseKeys, MaskedInput, ShareKeys, UnmaskShares
from fedlm.privacy.secagg.quantize import sum_error_bound
from fedlm.privacy.secagg.shamir import Share

CFG = SecAggConfig(seed=0)


def _reason(call, *args):
    with pytest.raises(SecAggError) as e:
        call(*args)
    return e.value.reason


def test_hand_driven_round_sums_correctly(hand_round):
    r = hand_round(4, length=16, config=CFG)
    r.advertise(), r.share(), r.mask(), r.unmask()
    result = r.server.unmask(r.answers.values())
    assert result.survivors == tuple(r.ids) and result.total_weight == 4
    assert np.abs(result.values - sum(r.vectors.values())).max() <= sum_error_bound(4, bits=16, clip=1.0)


def test_advertise_phase_rejections_leave_state_unchanged(hand_round):
    r = hand_round(4, length=8, config=CFG)
    adv = list(r.advertise().values())
    assert _reason(r.server.advertise_keys, [*adv, adv[0]]) == "replay"
    stranger = AdvertiseKeys(1, "zz", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    assert _reason(r.server.advertise_keys, [stranger]) == "not_member"
    assert (
        _reason(r.server.advertise_keys, [dataclasses.replace(adv[0], round_id=2)]) == "wrong_round"
    )
    assert _reason(r.server.share_keys, []) == "out_of_phase"
    assert _reason(r.server.setup) == "out_of_phase"
    assert r.server.phase == "advertise_keys"
    r.server.check(adv[0])  # validation alone changes nothing
    # After the rejected batches the honest batch still works end to end.
    r.share(), r.mask(), r.unmask()
    assert r.server.unmask(r.answers.values()).total_weight == 4


def test_later_phase_rejections(hand_round):
    r = hand_round(4, length=8, config=CFG)
    r.advertise()
    shares = r.share(skip=frozenset({"c3"}))
    first = shares["c0"]
    assert _reason(r.server.share_keys, [r.adv["c0"]]) == "out_of_phase"
    short = ShareKeys(1, "c0", first.items[:-1])
    assert _reason(r.server.share_keys, [short]) == "wrong_size"
    cut = ShareKeys(1, "c0", tuple((c, b[:-1]) for c, b in first.items))
    assert _reason(r.server.share_keys, [cut]) == "wrong_size"
    masked = r.mask()
    # c3 skipped share_keys, so it is no longer a member of the round.
    fake = MaskedInput(1, "c3", 32, np.zeros(9, np.uint32))
    assert _reason(r.server.masked_input, [fake]) == "not_member"
    wrong = MaskedInput(1, "c0", 32, masked["c0"].values[:-1].copy())
    assert _reason(r.server.masked_input, [wrong]) == "wrong_size"
    answers = r.unmask()
    a0 = answers["c0"]
    assert (
        _reason(r.server.unmask, [dataclasses.replace(a0, seed_shares=a0.seed_shares[:-1])])
        == "wrong_size"
    )
    result = r.server.unmask(answers.values())
    assert result.survivors == ("c0", "c1", "c2")
    assert (
        np.abs(result.values - sum(r.vectors[c] for c in result.survivors)).max()
        <= sum_error_bound(3, bits=16, clip=1.0)
    )


def test_tampered_seed_share_is_caught(hand_round):
    r = hand_round(4, length=8, config=CFG)
    r.advertise(), r.share(), r.mask()
    answers = r.unmask()
    a0 = answers["c0"]
    owner, raw = a0.seed_shares[0]
    share = Share.from_bytes(raw, secret_len=32)
    bad = Share(share.x, (share.ys[0] ^ 1, *share.ys[1:])).to_bytes()
    answers["c0"] = dataclasses.replace(a0, seed_shares=((owner, bad), *a0.seed_shares[1:]))
    with pytest.raises(SecAggAborted) as e:
        r.server.unmask(answers.values())
    assert e.value.reason == "bad_share"
    assert r.server.result is None and r.server.phase == "aborted"


def _splitting_cut(r, *, holders: int):
    """4 clients whose silence splits the rest while every secret keeps ``holders`` holders."""
    g = r.server.neighbours
    for cut in itertools.combinations(r.ids, 4):
        rest = set(r.ids) - set(cut)
        if not is_connected(rest, g) and all(len(g[c] & rest) >= holders for c in r.ids):
            return cut
    return None


def test_split_survivor_graph_aborts(hand_round, monkeypatch):
    # With a safe threshold (t = 3 > k / 2 on this k = 4 circulant) no cut splits the
    # survivors while every secret keeps t holders, so a split is refused as below_threshold.
    r = hand_round(14, length=8, config=SecAggConfig(neighbours=4, seed=0))
    assert r.server.threshold == 3 and _splitting_cut(r, holders=3) is None
    cut = _splitting_cut(r, holders=2)
    assert cut is not None
    r.advertise(), r.share(), r.mask(skip=frozenset(cut))
    with pytest.raises(SecAggAborted) as e:
        r.server.masked_input(r.masked.values())
    assert e.value.reason == "below_threshold" and r.server.result is None
    # The connectivity check is defence in depth: reach it with the safety floor lowered to
    # t = 2 (a threshold the config, the server and the clients now all refuse).
    monkeypatch.setattr("fedlm.privacy.secagg.server_checks.min_safe_threshold", lambda k, **_: 2)
    monkeypatch.setattr("fedlm.privacy.secagg.safety.min_safe_threshold", lambda k, **_: 2)
    weak = SecAggConfig.model_construct(**{**SecAggConfig(neighbours=4, seed=0).model_dump(), "threshold": 2})
    r = hand_round(14, length=8, config=weak)
    cut = _splitting_cut(r, holders=2)
    assert cut is not None
    r.advertise(), r.share(), r.mask(skip=frozenset(cut))
    with pytest.raises(SecAggAborted) as e:
        r.server.masked_input(r.masked.values())
    assert e.value.reason == "disconnected"
    assert r.server.result is None


def test_no_unmask_answers_after_abort(hand_round):
    r = hand_round(5, length=8, config=CFG)
    r.advertise(), r.share(), r.mask()
    answers = r.unmask()
    with pytest.raises(SecAggAborted):
        r.server.unmask([answers["c0"], answers["c1"]])
    assert _reason(r.server.unmask, list(answers.values())) == "out_of_phase"
    assert r.server.result is None


def test_impossible_settings_rejected():
    with pytest.raises(ValueError, match="threshold=9"):  # only 2 neighbours in a cohort of 3
        SecAggServer(["a", "b", "c"], vector_len=4, config=SecAggConfig(threshold=9))
    with pytest.raises(ValueError):
        SecAggServer(["a", "a"], vector_len=4, config=CFG)
    with pytest.raises(ValueError):
        SecAggServer(["a", "b"], vector_len=0, config=CFG)


def test_unmask_answer_with_foreign_share_point_rejected(hand_round):
    r = hand_round(4, length=8, config=CFG)
    r.advertise(), r.share(), r.mask()
    answers = r.unmask()
    a0, a1 = answers["c0"], answers["c1"]
    forged = UnmaskShares(
        1, "c0", ((a0.seed_shares[0][0], a1.seed_shares[0][1]), *a0.seed_shares[1:]), ()
    )
    assert _reason(r.server.check, forged) == "malformed"
