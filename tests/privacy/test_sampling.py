"""Secret cohort sampling: rates, sizes, keys, and the private files that hold them."""

import os
import stat

import numpy as np
import pytest

from fedlm.errors import ConfigError
from fedlm.privacy import sampling

IDS = [f"c{i}" for i in range(200)]


def test_poisson_cohorts_have_rate_q_and_fixed_cohorts_have_k():
    key = sampling.new_key()
    sizes = [len(sampling.poisson_cohort(key, r, IDS, 0.1)) for r in range(1, 401)]
    assert np.mean(sizes) == pytest.approx(20, abs=0.6)  # std of the mean: sqrt(18 / 400) = 0.21
    assert np.std(sizes) == pytest.approx(np.sqrt(18), rel=0.15)
    fixed = [sampling.fixed_cohort(key, r, IDS, 7) for r in range(1, 301)]
    assert all(len(c) == 7 == len(set(c)) for c in fixed)
    counts = np.bincount([IDS.index(c) for cohort in fixed for c in cohort], minlength=200)
    assert counts.mean() == pytest.approx(7 * 300 / 200) and counts.max() < 40  # uniform, no client favoured
    assert list(fixed[0]) == sorted(fixed[0], key=IDS.index)  # in the ids' order


def test_cohorts_depend_on_the_key_and_round_only():
    a, b = sampling.new_key(), sampling.new_key()
    assert a != b and len(a) == sampling.KEY_BYTES
    assert sampling.poisson_cohort(a, 3, IDS, 0.2) == sampling.poisson_cohort(a, 3, IDS, 0.2)
    assert sampling.poisson_cohort(a, 3, IDS, 0.2) != sampling.poisson_cohort(b, 3, IDS, 0.2)
    assert sampling.poisson_cohort(a, 3, IDS, 0.2) != sampling.poisson_cohort(a, 4, IDS, 0.2)
    assert sampling.fixed_cohort(a, 1, IDS, 5) != sampling.fixed_cohort(b, 1, IDS, 5)
    assert sampling.poisson_cohort(a, 1, IDS, 1.0) == tuple(IDS)
    with pytest.raises(ConfigError):
        sampling.fixed_cohort(a, 1, IDS, 201)


def test_key_file_is_0600_and_never_replaced_by_another(tmp_path):
    old = os.umask(0o022)
    try:
        key = sampling.new_key()
        path = sampling.save_key(tmp_path, key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sampling.load_key(tmp_path) == key
    sampling.save_key(tmp_path, key)  # the same key again: fine
    with pytest.raises(ConfigError, match="another sampling key"):
        sampling.save_key(tmp_path, sampling.new_key())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        sampling.load_key(tmp_path)
    assert sampling.load_key(tmp_path / "elsewhere") is None
