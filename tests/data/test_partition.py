from collections import Counter

import numpy as np
import pytest

from fedlm.data import partition as part
from fedlm.errors import DataError


def _covers(parts, n):
    flat = sorted(i for idx in parts.values() for i in idx)
    return flat == list(range(n))


def test_natural_groups_by_key_in_sorted_order():
    parts = part.natural(["b", "a", "b", "c", "a"])
    assert parts == {"a": [1, 4], "b": [0, 2], "c": [3]}


def test_iid_sizes_differ_by_at_most_one_and_cover_everything():
    parts = part.iid(103, 10, seed=1)
    sizes = [len(v) for v in parts.values()]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 103
    assert _covers(parts, 103)
    assert parts == part.iid(103, 10, seed=1)
    assert parts != part.iid(103, 10, seed=2)


def test_iid_label_mix_matches_the_global_mix():
    labels = [str(i % 4) for i in range(4000)]
    parts = part.iid(len(labels), 8, seed=0)
    assert part.mean_total_variation(part.label_histograms(parts, labels)) < 0.05


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_skew_follows_alpha(alpha):
    labels = [str(i % 8) for i in range(8000)]
    parts = part.dirichlet(labels, 10, alpha=alpha, seed=0)
    assert _covers(parts, len(labels))
    tv = part.mean_total_variation(part.label_histograms(parts, labels))
    # Expected TV for Dir(alpha) mixes over 8 labels: near 0 for large alpha,
    # large (most mass on one or two labels) for small alpha.
    if alpha == 100.0:
        assert tv < 0.1
    elif alpha == 0.1:
        assert tv > 0.5
    else:
        assert 0.1 < tv < 0.6


def test_dirichlet_small_alpha_gives_few_labels_per_client():
    labels = [str(i % 10) for i in range(10000)]
    parts = part.dirichlet(labels, 10, alpha=0.05, seed=3)
    dominant = [max(Counter(labels[i] for i in idx).values()) / len(idx) for idx in parts.values()]
    assert np.median(dominant) > 0.6


def test_quantity_skew_sizes_follow_alpha_and_sum_up():
    parts = part.quantity_skew(10000, 20, alpha=0.3, seed=0)
    sizes = np.array([len(v) for v in parts.values()])
    assert sizes.sum() == 10000 and sizes.min() >= 1
    assert _covers(parts, 10000)
    balanced = np.array([len(v) for v in part.quantity_skew(10000, 20, alpha=1000.0, seed=0).values()])
    # coefficient of variation: Dir(alpha) sizes have CV ~ sqrt((k-1)/(k*alpha+1))
    assert sizes.std() / sizes.mean() > 0.8
    assert balanced.std() / balanced.mean() < 0.1


def test_too_few_records_is_a_clear_error():
    with pytest.raises(DataError, match=r"lower data\.num_clients"):
        part.iid(3, 5, seed=0)


def test_mean_total_variation_of_disjoint_labels():
    hists = {"a": Counter({"x": 5}), "b": Counter({"y": 5})}
    assert part.mean_total_variation(hists) == pytest.approx(0.5)


# ------------------------------------------------------------------ pathological


@pytest.mark.parametrize(("num_clients", "k"), [(10, 2), (5, 3), (4, 1)])
def test_pathological_gives_exactly_k_labels_per_client(num_clients, k):
    labels = [f"l{i % 10}" for i in range(1000)]
    parts = part.pathological(labels, num_clients, classes_per_client=k, seed=0)
    hists = part.label_histograms(parts, labels)
    assert all(len(h) == k for h in hists.values())
    held = [i for idx in parts.values() for i in idx]
    assert len(held) == len(set(held))  # no record given twice
    owned = {lab for h in hists.values() for lab in h}
    assert len(held) == sum(1 for lab in labels if lab in owned)  # every record of an owned label is used
    if num_clients * k >= 10:
        assert owned == set(labels)


def test_pathological_splits_each_label_evenly_among_its_owners():
    labels = [f"l{i % 5}" for i in range(500)]  # 100 per label
    parts = part.pathological(labels, 10, classes_per_client=1, seed=3)  # each label: two owners
    hists = part.label_histograms(parts, labels)
    assert sorted(sum(h.values()) for h in hists.values()) == [50] * 10


def test_pathological_rejects_more_classes_than_labels():
    with pytest.raises(DataError, match="classes_per_client"):
        part.pathological(["a", "b"] * 5, 2, classes_per_client=3, seed=0)
