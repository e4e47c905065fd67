"""The neighbour graph of SecAgg+ and the default degree and threshold.

Bell et al. (2020), "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
replace the complete graph of Bonawitz et al. (2017) by a random k-regular graph with
k = O(log n): the Harary graph H(k, n) (a circulant: node at position p is joined to
positions p +- 1, ..., p +- k/2 mod n) with node labels randomly permuted by a seed the
server picks. A client masks only with, and shares its secrets only with, its k
neighbours, so its work is O(k) instead of O(n).

Defaults (documented choices, not the paper's exact constants):

- degree: k = n - 1 (the complete graph, i.e. Bonawitz et al.) while 6 log2(n) >= n - 1,
  which holds for n <= 31; above that k = 6 log2(n) rounded up to an even number (34 at
  n = 50, 40 at n = 100, 60 at n = 1000). Bell et al.'s concrete bounds for strong
  statistical security at scale are larger (about 3% of 10^4 clients); set the degree
  explicitly when the cohort is large and dropouts or corruptions are frequent.
- threshold: the smallest safe one, t = floor((k + c) / 2) + 1 with c = floor(gamma k)
  corrupt neighbours assumed (``secure_aggregation.corrupt_fraction`` = gamma). Each
  honest holder reveals only one share of a client i (of its self-mask seed b_i if i
  survived, of its mask key s_i if not); corrupt holders reveal both. A server that tells
  some neighbours "i survived" and others "i dropped" collects t shares of both only if
  (t - c) + (t - c) <= k - c, i.e. 2t <= k + c; so 2t > k + c keeps both secrets of i out
  of its reach. This is the counting argument behind the active-security threshold of
  Bonawitz et al. (2017, Sec. 6) for the complete graph, applied to each neighbourhood as
  in Bell et al. (2020). With gamma = 0 it is a strict majority, floor(k / 2) + 1. Each client
  tolerates k - t dropped neighbours; ``dropout_tolerance`` = delta asks for at least
  floor(delta k), possible with a safe t exactly when gamma + 2 delta < 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import numpy as np

from fedlm.config.secagg import corrupt_neighbours, min_safe_threshold
from fedlm.privacy.secagg.errors import SecAggError

_DEGREE_PER_LOG2 = 6.0


def default_degree(n: int) -> int:
    """Neighbour count k for a cohort of ``n`` clients (see module docstring)."""
    if n < 2:
        raise SecAggError(
            "bad_params", f"secure aggregation needs a cohort of at least 2, got n={n}"
        )
    k = 2 * math.ceil(_DEGREE_PER_LOG2 * math.log2(n) / 2)
    return min(n - 1, k)


def default_threshold(k: int, *, fraction: float = 0.5) -> int:
    """Shamir threshold t = floor(fraction * k) + 1 (a strict majority for 0.5), <= k."""
    return min(k, math.floor(fraction * k) + 1)


def required_degree(n: int, *, neighbours: int | None) -> int:
    """The degree a client insists on for a cohort of n: min(n - 1, configured or default)."""
    return min(n - 1, neighbours if neighbours is not None else default_degree(n))


def harary_neighbours(
    cohort: tuple[str, ...], *, degree: int, seed: int
) -> dict[str, frozenset[str]]:
    """Neighbours of each client in the relabelled Harary graph H(degree, n).

    Args:
        cohort: client ids in the round's fixed order (n of them).
        degree: k; rounded up to an even number when below n - 1 (so the graph is a
            circulant); k >= n - 1 gives the complete graph.
        seed: the server's graph seed; every client recomputes the same graph from it.

    Returns:
        client id -> frozenset of neighbour ids (the relation is symmetric).
    """
    n = len(cohort)
    if n < 2 or degree < 1:
        raise SecAggError("bad_params", f"need n >= 2 and degree >= 1, got n={n}, degree={degree}")
    if degree >= n - 1:
        everyone = frozenset(cohort)
        return {c: everyone - {c} for c in cohort}
    half = (degree + 1) // 2
    # position[i] is client i's place on the circle; a seeded permutation (PCG64) is
    # fine here because the graph is public, only the masks must be unpredictable.
    position = np.random.default_rng(seed).permutation(n).tolist()
    at = [0] * n  # at[p]: the client at place p on the circle
    for i, p in enumerate(position):
        at[p] = i
    offsets = [d for d in range(-half, half + 1) if d != 0]
    # Plain lists, not numpy: n small lookups each, where numpy's per-call cost dominated.
    return {
        cid: frozenset([cohort[at[(position[i] + d) % n]] for d in offsets])
        for i, cid in enumerate(cohort)
    }


def is_connected(nodes: Collection[str], neighbours: Mapping[str, frozenset[str]]) -> bool:
    """Whether the subgraph induced by ``nodes`` is connected (breadth-first search).

    If the survivors' subgraph splits, pairwise masks cancel inside each component and
    the server would learn each component's sum, so the round must abort instead.
    """
    alive = set(nodes)
    if not alive:
        return False
    start = next(iter(alive))
    seen, frontier = {start}, [start]
    while frontier:
        nxt = []
        for u in frontier:
            for v in neighbours[u] & alive:
                if v not in seen:
                    seen.add(v)
                    nxt.append(v)
        frontier = nxt
    return seen == alive


__all__ = [
    "corrupt_neighbours",
    "default_degree",
    "default_threshold",
    "harary_neighbours",
    "is_connected",
    "min_safe_threshold",
    "required_degree",
]
