import numpy as np
import pytest
from scipy.linalg import hadamard

from fedlm.errors import ConfigError
from fedlm.privacy.distributed.rotation import fwht, padded_dim, rotate, rotation_signs, unrotate


@pytest.mark.parametrize(
    ("dim", "padded"), [(1, 1), (2, 2), (3, 4), (5, 8), (1000, 1024), (1024, 1024)]
)
def test_padded_dim(dim, padded):
    assert padded_dim(dim) == padded


@pytest.mark.parametrize("dim", [0, -3, 2.5])
def test_padded_dim_rejects(dim):
    with pytest.raises(ConfigError, match="dim"):
        padded_dim(dim)


def test_fwht_hand_worked():
    # H_4 (Sylvester order) = [[1,1,1,1],[1,-1,1,-1],[1,1,-1,-1],[1,-1,-1,1]]:
    # H [1,2,3,4] = [1+2+3+4, 1-2+3-4, 1+2-3-4, 1-2-3+4] = [10, -2, -4, 0].
    assert fwht(np.array([1.0, 2.0, 3.0, 4.0])).tolist() == [10.0, -2.0, -4.0, 0.0]
    assert fwht(np.array([1.0, 0.0, 0.0, 0.0])).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_fwht_matches_dense_hadamard_on_a_batch():
    x = np.random.default_rng(0).normal(size=(3, 64))
    np.testing.assert_allclose(fwht(x), x @ hadamard(64).T, atol=1e-12)
    np.testing.assert_allclose(fwht(fwht(x)), 64 * x, atol=1e-11)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ConfigError, match="power-of-two"):
        fwht(np.ones(6))


def test_signs_are_pinned_to_the_pcg64_stream():
    # First word of PCG64(SeedSequence(0)) is 0xa30febcfd9c2825f; bytes little-endian,
    # bits little-endian: 0x5f = 0b01011111 -> bits 1,1,1,1,1,0,1,0 -> signs 1 - 2 * bit.
    assert rotation_signs(0, 8).tolist() == [-1, -1, -1, -1, -1, 1, -1, 1]
    assert rotation_signs(0, 12).tolist()[8:] == [1, -1, 1, 1]  # 0x82 = 0b10000010
    np.testing.assert_array_equal(rotation_signs((7, 3), 64), rotation_signs([7, 3], 64))
    assert not np.array_equal(rotation_signs(1, 64), rotation_signs(2, 64))


@pytest.mark.parametrize("dim", [1, 7, 300, 1024])
def test_rotation_is_orthogonal_and_inverts_exactly(dim):
    x = np.random.default_rng(dim).normal(size=dim)
    y = rotate(x, seed=(11, 2))
    assert y.shape == (padded_dim(dim),)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) < 1e-12 * np.linalg.norm(x)
    np.testing.assert_allclose(unrotate(y, seed=(11, 2), dim=dim), x, atol=1e-12)


def test_rotation_matrix_is_orthogonal():
    u = rotate(np.eye(16), seed=5)  # row i = U e_i, so this is U^T
    np.testing.assert_allclose(u @ u.T, np.eye(16), atol=1e-12)


def test_rotation_flattens_a_spike():
    # U e_1 = H D e_1 / sqrt(D): every coordinate is +-1/sqrt(D).
    y = rotate(np.eye(256)[0], seed=3)
    np.testing.assert_allclose(np.abs(y), np.full(256, 1 / 16), atol=1e-15)


def test_unrotate_with_another_seed_does_not_invert():
    x = np.random.default_rng(0).normal(size=100)
    assert np.linalg.norm(unrotate(rotate(x, seed=1), seed=2, dim=100) - x) > 1.0


def test_unrotate_rejects_a_wrong_dim():
    with pytest.raises(ConfigError, match="pads to"):
        unrotate(np.zeros(16), seed=0, dim=3)
