"""What a masked input can carry: the exact honest sum, and the bounds on a lying client.

A malicious client can send any vector mod 2^m; the server sees only the sum. The sum is
refused when no honest inputs could produce it (total weight outside [n, n W], or a
coordinate above (2^b - 1) * total weight), so the decoded mean stays in [-c, c]; inside
those bounds a lie goes through, as docs/threat-model.md states.
"""

import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggAborted
from fedlm.privacy.secagg.messages import MaskedInput
from fedlm.privacy.secagg.quantize import quantize

CFG = SecAggConfig(seed=0, max_weight=4, bits=8, clip_range=0.5)
LEVELS = (1 << CFG.bits) - 1


def _round(hand_round, *, weights=None, n=5, length=6):
    r = hand_round(n, length=length, config=CFG)
    r.advertise(), r.share()
    r.fwd = r.server.share_keys(r.shares.values())
    weights = weights or {}
    r.masked = {
        c: r.clients[c].masked_input(m, r.vectors[c], weight=weights.get(c, 1)) for c, m in r.fwd.items()
    }
    return r


def _shift(r, client, delta):
    """The client adds ``delta`` (shape (L + 1,), mod 2^m) to its masked upload: a lie."""
    y = r.masked[client].values.astype(np.uint64)
    y = ((y + np.asarray(delta, dtype=np.uint64)) % (1 << CFG.modulus_bits)).astype(np.uint32)
    r.masked[client] = MaskedInput(1, client, CFG.modulus_bits, y)


def _finish(r):
    r.unmask()
    return r.server.unmask(r.answers.values())


@pytest.mark.parametrize("weights", [None, {"c0": 4, "c2": 3}])
def test_honest_sum_equals_the_plain_sum_of_quantised_inputs_exactly(hand_round, weights):
    r = _round(hand_round, weights=weights)
    result = _finish(r)
    w = {c: (weights or {}).get(c, 1) for c in r.ids}
    # each HandRound client i rounds with default_rng(i): redo its quantisation by hand
    want = sum(
        w[c] * quantize(r.vectors[c], bits=CFG.bits, clip=CFG.clip_range, rng=np.random.default_rng(i)).astype(np.int64)
        for i, c in enumerate(r.ids)
    )
    assert np.array_equal(result.total.astype(np.int64), want)
    assert result.total_weight == sum(w.values())


@pytest.mark.parametrize("extra", [100, 16, -1 % (1 << 32)])  # far above, just above n W = 20, below n
def test_a_weight_outside_the_cap_is_refused_inside_the_sum(hand_round, extra):
    r = _round(hand_round)
    delta = np.zeros(7, np.uint64)
    delta[-1] = extra
    _shift(r, "c0", delta)
    with pytest.raises(SecAggAborted) as e:
        _finish(r)
    assert e.value.reason == "out_of_range" and r.server.result is None


def test_a_coordinate_pushed_out_of_range_is_refused(hand_round):
    r = _round(hand_round)
    delta = np.zeros(7, np.uint64)
    delta[2] = 5 * LEVELS + 1  # more than all 5 clients' largest levels together
    _shift(r, "c0", delta)
    with pytest.raises(SecAggAborted, match="coordinates") as e:
        _finish(r)
    assert e.value.reason == "out_of_range"


def test_what_a_lying_client_can_still_do_within_the_bounds(hand_round):
    r = _round(hand_round)
    honest = np.zeros(6, np.int64)
    for i, c in enumerate(r.ids):
        honest += quantize(
            r.vectors[c], bits=CFG.bits, clip=CFG.clip_range, rng=np.random.default_rng(i)
        ).astype(np.int64)
    delta = np.zeros(7, np.uint64)
    delta[-1] = 3  # claim weight 4 instead of 1 (within max_weight = 4): total weight 8
    delta[2] = 8 * LEVELS - int(honest[2])  # coordinate 2 of the sum at its maximum for weight 8
    _shift(r, "c0", delta)
    result = _finish(r)  # accepted: indistinguishable from honest inputs
    assert result.total_weight == 8
    mean = result.values / result.total_weight
    assert mean[2] == pytest.approx(CFG.clip_range)  # one client moved the mean to the clip bound
    assert np.all(np.abs(mean) <= CFG.clip_range + 1e-12)  # but never beyond [-c, c]
