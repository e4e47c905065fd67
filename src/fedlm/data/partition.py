"""Partitioners: split record indices into clients.

Each returns ``{client_id: [record indices]}`` with sorted client ids and sorted
indices, and is a pure function of its inputs and seed.

Flower's ``flwr-datasets`` partitioners do the splitting where they fit:

- ``iid``: ``IidPartitioner`` (contiguous, near-equal shards of the shuffled records).
- ``dirichlet``: ``DirichletPartitioner`` (label skew, Yurochkin et al. 2019; Hsu et
  al. 2019), redrawn until every client holds ``min_size`` records.
- ``shard``: ``ShardPartitioner`` (McMahan et al. 2017: records sorted by label, cut
  into equal shards, ``shards_per_client`` random shards each).
- ``quantity``: ``SizePartitioner`` with client sizes drawn here from Dir(alpha);
  flwr-datasets has fixed size laws (linear, square, exponential) but no Dirichlet one.

As ``FederatedDataset(shuffle=True, seed=seed)`` does, the records are shuffled with
``seed`` before a flwr-datasets partitioner sees them; partitioners that draw randomness
of their own get ``seed + 1`` (an independent stream, so the two share no bits).

fedlm keeps its own where flwr-datasets lacks the partitioner:

- ``natural``: a group-by on the client key. ``NaturalIdPartitioner`` forms the same
  groups but selects one ``Dataset`` per client: 7.8 s for the 1,470 Shakespeare roles
  (measured on 2 CPU cores) against milliseconds here.
- ``pathological``: every client holds exactly ``k`` labels *and* every label is used
  when ``num_clients * k >= labels``. ``PathologicalPartitioner`` gives the first
  guarantee only: its deterministic mode slides a window (client ``c`` gets labels
  ``c .. c+k-1``, so 5 clients x 3 of 10 labels never use 3 labels) and its random
  modes draw labels per client, leaving labels unowned by chance.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlm.errors import DataError


def natural(keys: Sequence[str]) -> dict[str, list[int]]:
    """One client per distinct key (a field such as the NIH source, or a speaking role)."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        out[k].append(i)
    return dict(sorted(out.items()))


def iid(n: int, num_clients: int, *, seed: int) -> dict[str, list[int]]:
    """Shuffle, then cut into contiguous shards; sizes differ by at most one (flwr ``IidPartitioner``).

    Client ``c`` gets positions ``[c*q + min(c, r), (c+1)*q + min(c+1, r))`` of the
    permutation ``default_rng(seed).permutation(n)``, with ``q, r = divmod(n, num_clients)``.
    """
    IidPartitioner = _flwr_partitioner("IidPartitioner")
    _check_enough(n, num_clients)
    return _flwr(IidPartitioner(num_partitions=num_clients), n, None, seed=seed)


def dirichlet(labels: Sequence[str], num_clients: int, *, alpha: float, seed: int, min_size: int = 1) -> dict[str, list[int]]:
    """Label skew: each label's records split by proportions ~ Dir(alpha) (flwr ``DirichletPartitioner``).

    Smaller alpha gives each client fewer labels. Draws repeat (flwr-datasets tries 11
    times) until every client holds at least ``min_size`` records.
    """
    DirichletPartitioner = _flwr_partitioner("DirichletPartitioner")
    _check_enough(len(labels), num_clients * min_size)
    partitioner = DirichletPartitioner(
        num_partitions=num_clients, partition_by="label", alpha=float(alpha), min_partition_size=min_size,
        self_balancing=False, shuffle=True, seed=seed + 1,
    )
    fix = "raise data.dirichlet_alpha or lower data.num_clients"
    return _flwr(partitioner, len(labels), labels, seed=seed, fix=fix)


def shard(labels: Sequence[str], num_clients: int, *, shards_per_client: int, seed: int) -> dict[str, list[int]]:
    """McMahan et al. 2017's pathological split (flwr ``ShardPartitioner``).

    Records are sorted by label and cut into ``num_clients * shards_per_client`` shards
    of ``floor(n / (num_clients * shards_per_client))`` records (the remainder is left
    out); each client gets ``shards_per_client`` shards, ``default_rng(seed + 1)`` permuting
    the shard order. A shard spans two labels only where it straddles their boundary.
    """
    ShardPartitioner = _flwr_partitioner("ShardPartitioner")
    _check_enough(len(labels), num_clients * shards_per_client)
    partitioner = ShardPartitioner(
        num_partitions=num_clients, partition_by="label", num_shards_per_partition=shards_per_client,
        shuffle=True, seed=seed + 1,
    )
    fix = "lower data.num_clients or data.shards_per_client"
    return _flwr(partitioner, len(labels), labels, seed=seed, fix=fix)


def quantity_skew(n: int, num_clients: int, *, alpha: float, seed: int) -> dict[str, list[int]]:
    """Client sizes ~ Dir(alpha) over a shuffled pool; every client gets at least one record.

    One generator ``default_rng(seed)`` permutes the records, then draws the proportions;
    sizes are ``1 + floor(p * (n - num_clients))`` with the rounding remainder given to the
    largest; flwr ``SizePartitioner`` cuts the permutation into runs of those sizes.
    """
    SizePartitioner = _flwr_partitioner("SizePartitioner")
    _check_enough(n, num_clients)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    props = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + np.floor(props * (n - num_clients)).astype(int)
    sizes[np.argmax(props)] += n - sizes.sum()  # hand the rounding remainder to the largest
    return _flwr(SizePartitioner(partition_sizes=[int(s) for s in sizes]), n, None, order=order)


def pathological(labels: Sequence[str], num_clients: int, *, classes_per_client: int, seed: int) -> dict[str, list[int]]:
    """Pathological label skew: every client holds exactly ``classes_per_client`` labels.

    The "#C=k" split of McMahan et al. 2017 (two digits per client) as generalised by
    Li et al. 2022 (NIID-Bench). Labels are dealt cyclically over a seeded shuffle of
    the label set, client ``c`` taking labels ``c*k, ..., c*k + k - 1`` (mod L), so every
    label is held by some client when ``num_clients * k >= L`` and owners per label
    differ by at most one. Each label's records are then split into near-equal shares
    among its owners.

    Raises:
        DataError: ``classes_per_client`` exceeds the number of distinct labels, or a
            client would end up without records.
    """
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    names = sorted(by_label)
    k = classes_per_client
    if k > len(names):
        raise DataError(
            f"data.classes_per_client={k} exceeds the {len(names)} distinct labels; lower it to at most {len(names)}"
        )
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    owners: dict[str, list[int]] = defaultdict(list)
    for c in range(num_clients):
        for j in range(k):
            owners[order[(c * k + j) % len(order)]].append(c)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for lab, cs in owners.items():
        idx = np.array(by_label[lab])
        rng.shuffle(idx)
        for c, chunk in zip(cs, np.array_split(idx, len(cs)), strict=True):
            parts[c].extend(chunk.tolist())
    empty = [c for c, p in enumerate(parts) if not p]
    if empty:
        raise DataError(
            f"pathological partition left {len(empty)} client(s) without records (a label has fewer records than "
            "owners); lower data.num_clients or raise data.classes_per_client"
        )
    return {_cid(c, num_clients): sorted(p) for c, p in enumerate(parts)}


def label_histograms(parts: dict[str, list[int]], labels: Sequence[str]) -> dict[str, Counter]:
    """Per-client label counts, for ``fedlm data inspect``."""
    return {cid: Counter(labels[i] for i in idx) for cid, idx in parts.items()}


def mean_total_variation(hists: dict[str, Counter]) -> float:
    """Average total-variation distance between each client's label mix and the global mix.

    0 means IID label mixes; 1 means disjoint labels.
    """
    total: Counter = Counter()
    for h in hists.values():
        total.update(h)
    n_total = sum(total.values())
    if not n_total:
        return 0.0
    tvs = []
    for h in hists.values():
        n = sum(h.values())
        if n:
            tvs.append(0.5 * sum(abs(h[k] / n - total[k] / n_total) for k in total))
    return float(np.mean(tvs)) if tvs else 0.0


def _flwr(
    partitioner: Any, n: int, labels: Sequence[str] | None, *, seed: int = 0, order: np.ndarray | None = None,
    fix: str = "lower data.num_clients",
) -> dict[str, list[int]]:
    """Run a flwr-datasets partitioner over the records shuffled by ``order`` (default: by ``seed``).

    The partitioner sees a two-column table (record index, label) and each partition is
    read back as the record indices it selected.
    """
    from datasets import Dataset

    from fedlm.data.hf import quiet

    order = np.random.default_rng(seed).permutation(n) if order is None else order
    table = {"index": [int(i) for i in order], "label": [str(labels[i]) for i in order] if labels is not None else [""] * n}
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flwr warns on each Dirichlet redraw; failure is raised below
        partitioner.dataset = Dataset.from_dict(table)
        try:
            count = partitioner.num_partitions
            # a slice reads the whole column at once; iterating a Column reads it row by row
            parts = [sorted(partitioner.load_partition(c)[:]["index"]) for c in range(count)]
        except ValueError as exc:
            raise DataError(f"the {type(partitioner).__name__} of flwr-datasets cannot split {n} records: {exc}; {fix}") from None
    empty = sum(1 for p in parts if not p)
    if empty:
        raise DataError(f"{type(partitioner).__name__} left {empty} client(s) without records; {fix}")
    return {_cid(c, count): p for c, p in enumerate(parts)}


def _flwr_partitioner(name: str) -> Any:
    """A flwr-datasets partitioner class, imported on first use (it loads ``datasets``)."""
    try:
        from flwr_datasets import partitioner
    except ImportError as exc:
        raise DataError(
            f"this data.partition uses flwr-datasets' {name}, which is not installed ({exc}); install it with "
            "`pip install --no-deps flwr-datasets==0.6.1` (and `datasets`, `seaborn`), or use data.partition=natural"
        ) from None
    return getattr(partitioner, name)


def _cid(c: int, num_clients: int) -> str:
    return f"client_{c:0{len(str(num_clients - 1))}d}"


def _check_enough(n: int, need: int) -> None:
    if n < need:
        raise DataError(f"{n} records cannot fill {need} client slots; lower data.num_clients or add data")


__all__ = [
    "dirichlet",
    "iid",
    "label_histograms",
    "mean_total_variation",
    "natural",
    "pathological",
    "quantity_skew",
    "shard",
]
