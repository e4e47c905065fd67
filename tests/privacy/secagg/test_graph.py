import pytest

from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.graph import (
    default_degree,
    default_threshold,
    harary_neighbours,
    is_connected,
)


@pytest.mark.parametrize(
    "n,k", [(2, 1), (3, 2), (10, 9), (31, 30), (32, 30), (50, 34), (100, 40), (1000, 60)]
)
def test_default_degree(n, k):
    assert default_degree(n) == k


@pytest.mark.parametrize("k,t", [(1, 1), (2, 2), (9, 5), (34, 18), (40, 21)])
def test_default_threshold_is_a_strict_majority(k, t):
    assert default_threshold(k) == t and t > k / 2


def test_harary_graph_is_regular_symmetric_and_seeded():
    ids = tuple(f"c{i}" for i in range(40))
    g = harary_neighbours(ids, degree=6, seed=1)
    assert all(len(v) == 6 and c not in v for c, v in g.items())
    assert all(c in g[d] for c, v in g.items() for d in v)
    assert g == harary_neighbours(ids, degree=6, seed=1)
    assert g != harary_neighbours(ids, degree=6, seed=2)
    odd = harary_neighbours(ids, degree=5, seed=1)  # odd k rounds up to a circulant of degree 6
    assert all(len(v) == 6 for v in odd.values())
    assert is_connected(ids, g)


def test_small_cohort_is_complete():
    ids = ("a", "b", "c")
    assert harary_neighbours(ids, degree=5, seed=0) == {
        "a": frozenset("bc"),
        "b": frozenset("ac"),
        "c": frozenset("ab"),
    }


def test_connectivity_detects_a_split_ring():
    ids = tuple(str(i) for i in range(8))
    ring = {ids[i]: frozenset({ids[(i - 1) % 8], ids[(i + 1) % 8]}) for i in range(8)}
    assert is_connected(ids, ring)
    assert not is_connected([i for i in ids if i not in ("0", "4")], ring)
    assert not is_connected([], ring)


def test_bad_sizes_rejected():
    with pytest.raises(SecAggError):
        default_degree(1)
    with pytest.raises(SecAggError):
        harary_neighbours(("a",), degree=1, seed=0)
