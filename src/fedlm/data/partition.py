"""Partitioners: split record indices into clients.

Natural, IID, Dirichlet label skew, pathological (k labels per client) and quantity
skew. Each returns ``{client_id: [record indices]}`` with sorted client ids and is a pure
function of its inputs and seed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from fedlm.errors import DataError


def natural(keys: Sequence[str]) -> dict[str, list[int]]:
    """One client per distinct key (a field such as the NIH source, or a speaking role)."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        out[k].append(i)
    return dict(sorted(out.items()))


def iid(n: int, num_clients: int, *, seed: int) -> dict[str, list[int]]:
    """Shuffle, then deal records round-robin: client sizes differ by at most one."""
    _check_enough(n, num_clients)
    order = np.random.default_rng(seed).permutation(n)
    return {_cid(c, num_clients): sorted(order[c::num_clients].tolist()) for c in range(num_clients)}


def dirichlet(labels: Sequence[str], num_clients: int, *, alpha: float, seed: int, min_size: int = 1) -> dict[str, list[int]]:
    """Label skew (Hsu et al. 2019): each label's records split by proportions ~ Dir(alpha).

    Smaller alpha gives each client fewer labels. Draws repeat (up to 100 times)
    until every client holds at least ``min_size`` records.
    """
    _check_enough(len(labels), num_clients * min_size)
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for lab in sorted(by_label):
            idx = np.array(by_label[lab])
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for c, chunk in enumerate(np.split(idx, cuts)):
                parts[c].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return {_cid(c, num_clients): sorted(p) for c, p in enumerate(parts)}
    raise DataError(
        f"Dirichlet partition with alpha={alpha} left a client with fewer than {min_size} records after 100 draws; "
        "raise data.dirichlet_alpha or lower data.num_clients"
    )


def quantity_skew(n: int, num_clients: int, *, alpha: float, seed: int) -> dict[str, list[int]]:
    """Client sizes ~ Dir(alpha) over a shuffled pool; every client gets at least one record."""
    _check_enough(n, num_clients)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    props = rng.dirichlet(np.full(num_clients, alpha))
    sizes = 1 + np.floor(props * (n - num_clients)).astype(int)
    sizes[np.argmax(props)] += n - sizes.sum()  # hand the rounding remainder to the largest
    cuts = np.cumsum(sizes)[:-1]
    return {_cid(c, num_clients): sorted(p.tolist()) for c, p in enumerate(np.split(order, cuts))}


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


def _cid(c: int, num_clients: int) -> str:
    return f"client_{c:0{len(str(num_clients - 1))}d}"


def _check_enough(n: int, need: int) -> None:
    if n < need:
        raise DataError(f"{n} records cannot fill {need} client slots; lower data.num_clients or add data")
