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


# ------------------------------------------------------------------ flwr-datasets partitioners


def test_iid_is_flwr_contiguous_shards_of_the_seeded_permutation():
    # default_rng(0).permutation(10) = [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]; IidPartitioner cuts
    # it into contiguous shards of 4, 3, 3 (divmod(10, 3) = (3, 1): the first gets one more).
    assert part.iid(10, 3, seed=0) == {"client_0": [2, 4, 6, 7], "client_1": [3, 5, 9], "client_2": [0, 1, 8]}


def test_quantity_skew_sizes_are_the_documented_dirichlet_draw():
    # One generator: permutation of the records, then proportions ~ Dir(alpha); sizes are
    # 1 + floor(p * (n - k)) with the remainder on the largest; SizePartitioner cuts runs.
    n, k, alpha, seed = 30, 4, 0.5, 7
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    props = rng.dirichlet(np.full(k, alpha))
    sizes = 1 + np.floor(props * (n - k)).astype(int)
    sizes[np.argmax(props)] += n - sizes.sum()
    cuts = np.cumsum(sizes)[:-1]
    expected = {f"client_{c}": sorted(p.tolist()) for c, p in enumerate(np.split(order, cuts))}
    assert part.quantity_skew(n, k, alpha=alpha, seed=seed) == expected


def test_shard_gives_each_client_whole_label_sorted_shards():
    labels = ["a"] * 4 + ["b"] * 4 + ["c"] * 4  # 12 records, 3 clients x 2 shards of 2 records
    parts = part.shard(labels, 3, shards_per_client=2, seed=5)
    assert _covers(parts, 12)
    # Shards of the label-sorted records: 0, 1 hold "a", 2, 3 "b", 4, 5 "c". flwr draws the
    # shard order with default_rng(seed + 1) and deals consecutive pairs to the clients.
    shard_order = np.random.default_rng(6).permutation(6)
    for c, (cid, idx) in enumerate(parts.items()):
        expected: Counter = Counter()
        for s in shard_order[2 * c: 2 * c + 2]:
            expected["abc"[s // 2]] += 2  # shard s holds 2 records of label "abc"[s // 2]
        assert Counter(labels[i] for i in idx) == expected, cid
    assert parts == part.shard(labels, 3, shards_per_client=2, seed=5)


def test_shard_with_too_few_records_is_a_clear_error():
    with pytest.raises(DataError, match=r"lower data\.num_clients"):
        part.shard(["a", "b", "c"], 2, shards_per_client=2, seed=0)


def test_dirichlet_that_cannot_fill_every_client_is_a_clear_error():
    labels = [str(i % 2) for i in range(40)]
    with pytest.raises(DataError, match=r"DirichletPartitioner.*raise data\.dirichlet_alpha or lower data\.num_clients"):
        part.dirichlet(labels, 8, alpha=0.01, seed=0, min_size=5)


def test_natural_matches_flwr_natural_id_partitioner():
    # fedlm keeps its group-by (NaturalIdPartitioner selects one Dataset per client: slow
    # for thousands of clients); both give the sorted ids with the same indices.
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    keys = ["b", "a", "b", "c", "a", "c", "c"]
    flwr = NaturalIdPartitioner(partition_by="key")
    flwr.dataset = Dataset.from_dict({"key": keys, "index": list(range(len(keys)))})
    theirs = {flwr.partition_id_to_natural_id[p]: sorted(flwr.load_partition(p)[:]["index"])
              for p in range(flwr.num_partitions)}
    assert part.natural(keys) == theirs


LABELS = [f"l{i % 5}" for i in range(200)]
PARTITIONERS = {
    "iid": lambda seed: part.iid(len(LABELS), 6, seed=seed),
    "dirichlet": lambda seed: part.dirichlet(LABELS, 6, alpha=0.5, seed=seed),
    "quantity": lambda seed: part.quantity_skew(len(LABELS), 6, alpha=1.0, seed=seed),
    "pathological": lambda seed: part.pathological(LABELS, 6, classes_per_client=2, seed=seed),
    "shard": lambda seed: part.shard(LABELS, 6, shards_per_client=2, seed=seed),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_every_partitioner_keeps_the_contract(name):
    parts = PARTITIONERS[name](3)
    assert list(parts) == [f"client_{c}" for c in range(6)]  # sorted ids
    held = [i for idx in parts.values() for i in idx]
    assert len(held) == len(set(held)) and set(held) <= set(range(len(LABELS)))  # no record twice
    assert all(idx == sorted(idx) and idx for idx in parts.values())  # sorted, none empty
    assert parts == PARTITIONERS[name](3)  # deterministic for a seed
    assert parts != PARTITIONERS[name](4)
