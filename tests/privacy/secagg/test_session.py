import numpy as np
import pytest

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import SecAggError
from fedlm.privacy.secagg.quantize import sum_error_bound
from fedlm.privacy.secagg.session import SecAggSession, draw_dropouts


def _session(n=5, length=64, **cfg):
    ids = [f"c{i}" for i in range(n)]
    s = SecAggSession(ids, vector_len=length, config=SecAggConfig(seed=1, **cfg), seed=1)
    s.start()
    return ids, s


def test_replayed_tampered_and_foreign_uploads_are_dropped_with_a_reason():
    ids, s = _session(n=7)  # k = 6, t = 4: five survivors are enough
    x = {c: np.full(64, 0.1 * i) for i, c in enumerate(ids)}
    ups = {c: s.mask(c, x[c]) for c in ids}
    tampered = bytearray(ups["c1"])
    tampered[20] ^= 1  # inside the client id / length fields: no longer parses as c1's input
    truncated = ups["c2"][:-4]
    rest = [ups[c] for c in ("c3", "c4", "c5", "c6")]
    result = s.finish([ups["c0"], ups["c0"], bytes(tampered), truncated, *rest])
    reasons = sorted(r for _, r in s.stats["rejected"])
    assert "replay" in reasons and "malformed" in reasons
    assert len(reasons) == 3
    assert result.survivors == ("c0", "c3", "c4", "c5", "c6")
    want = sum(x[c] for c in result.survivors)
    assert np.abs(result.values - want).max() <= sum_error_bound(5, bits=16, clip=1.0)


def test_mask_twice_or_out_of_round_is_refused():
    _, s = _session()
    s.mask("c0", np.zeros(64))
    with pytest.raises(SecAggError, match="replay"):
        s.mask("c0", np.zeros(64))
    with pytest.raises(SecAggError, match="not_member"):
        s.mask("zz", np.zeros(64))


def test_phase_dropout_draws_exact_disjoint_counts():
    cohort = [f"c{i}" for i in range(20)]
    cfg = SecAggConfig(phase_dropout={"share_keys": 0.1, "masked_input": 0.25})
    drops = draw_dropouts(cohort, config=cfg, rng=np.random.default_rng(0))
    assert len(drops["share_keys"]) == 2 and len(drops["masked_input"]) == 5
    assert not drops["share_keys"] & drops["masked_input"]
    again = draw_dropouts(cohort, config=cfg, rng=np.random.default_rng(0))
    assert again == drops  # seeded


@pytest.mark.parametrize("bad", [{"later": 0.1}, {"share_keys": 1.0}, {"share_keys": 0.6, "unmasking": 0.5}])
def test_phase_dropout_config_is_validated(bad):
    with pytest.raises(ValueError, match="phase_dropout"):
        SecAggConfig(phase_dropout=bad)
