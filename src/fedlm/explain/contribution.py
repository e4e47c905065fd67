"""Who contributed what: Shapley-value estimators over a coalition utility.

Every estimator here is pure Python over a *utility* ``u(coalition) -> float`` (higher is
better, e.g. minus the validation loss of the model rebuilt from that coalition's updates;
``fedlm.explain.coalitions`` builds such a utility from one round's stored updates). No
torch: the estimators only see coalitions of client ids and numbers.

Three estimators, from most to least expensive:

* ``exact_shapley``: the Shapley value (Shapley 1953, "A Value for n-Person Games"),
  enumerating all ``2**n`` coalitions. Exact but exponential: 8 clients = 256 utility
  evaluations, 12 clients = 4,096.
* ``gtg_shapley``: GTG-Shapley (Liu et al. 2022, "GTG-Shapley: Efficient and Accurate
  Participant Contribution Evaluation in Federated Learning"): Monte-Carlo permutation
  sampling with guided (rotated) first positions, within-round and between-round
  truncation, a convergence check and memoised utilities.
* ``leave_one_out``: ``u(N) - u(N minus i)``, ``n + 1`` evaluations. Cheap, but two clients
  holding the same data each get (near) zero, since either one alone suffices.

Every result counts the *distinct* coalitions whose utility was computed (``evaluations``),
the figure that costs model evaluations in a federation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from fedlm.errors import ConfigError

Utility = Callable[[frozenset[str]], float]

# The bound for exact Shapley: 2**8 = 256 coalition models per round.
EXACT_MAX_PLAYERS = 8


@dataclass(frozen=True)
class ContributionResult:
    """Per-client contribution estimates for one round.

    Attributes:
        values: client id -> contribution, in utility units (sums to about
            ``u(all) - u(empty)`` for the Shapley estimators).
        evaluations: distinct coalitions whose utility was computed.
        method: "exact", "gtg" or "loo".
        permutations: permutations sampled (GTG only; 0 otherwise).
        converged: GTG stopped on its convergence check (None for other methods).
        round_truncated: GTG skipped the round because ``|u(all) - u(empty)|`` was
            below the between-round threshold; every value is then 0.
    """

    values: dict[str, float]
    evaluations: int
    method: str
    permutations: int = 0
    converged: bool | None = None
    round_truncated: bool = False


class CachedUtility:
    """Memoise a utility over coalitions and count the distinct evaluations.

    A coalition's model is rebuilt and evaluated once however many permutations or
    formulas ask for it (GTG-Shapley's utility caching).
    """

    def __init__(self, utility: Utility) -> None:
        self._utility = utility
        self._cache: dict[frozenset[str], float] = {}

    def __call__(self, coalition: frozenset[str]) -> float:
        key = frozenset(coalition)
        if key not in self._cache:
            value = float(self._utility(key))
            if not math.isfinite(value):
                raise ConfigError(
                    f"utility of coalition {sorted(key)} is {value}; the utility must be a "
                    "finite number (check the evaluation for NaN/inf losses)"
                )
            self._cache[key] = value
        return self._cache[key]

    @property
    def evaluations(self) -> int:
        """Distinct coalitions evaluated so far."""
        return len(self._cache)


def _players(players: Iterable[str]) -> list[str]:
    out = list(players)
    if len(set(out)) != len(out):
        raise ConfigError(f"player ids must be distinct, got {out}")
    return out


def exact_shapley(
    players: Iterable[str], utility: Utility, *, max_players: int = EXACT_MAX_PLAYERS
) -> ContributionResult:
    """Exact Shapley values by enumerating every coalition (Shapley 1953).

    ``phi_i = sum_{S subset of N minus i} |S|! (n-|S|-1)! / n! * (u(S + i) - u(S))``.
    Costs exactly ``2**n`` utility evaluations (each coalition once).

    Args:
        players: client ids (distinct).
        utility: ``u(coalition) -> float``, higher is better.
        max_players: refuse larger cohorts. The default (8, 256 evaluations) is the
            bound the config enforces; raise it deliberately (12 = 4,096 evaluations)
            when the utility is cheap.

    Raises:
        ConfigError: more than ``max_players`` players, or duplicate ids.
    """
    ids = _players(players)
    n = len(ids)
    if n > max_players:
        raise ConfigError(
            f"exact Shapley over {n} players needs 2**{n} = {2**n} utility evaluations, "
            f"above max_players={max_players}; use method 'gtg' or raise max_players"
        )
    u = CachedUtility(utility)
    # weight[s] = s! (n-s-1)! / n!: the chance that exactly the s players before i in a
    # uniformly random permutation form a given coalition S of size s.
    weight = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    values = {}
    for i in ids:
        others = [p for p in ids if p != i]
        phi = 0.0
        for s in range(n):
            for subset in combinations(others, s):
                coalition = frozenset(subset)
                phi += weight[s] * (u(coalition | {i}) - u(coalition))
        values[i] = phi
    if n == 0:
        u(frozenset())
    return ContributionResult(values=values, evaluations=u.evaluations, method="exact")


def leave_one_out(players: Iterable[str], utility: Utility) -> ContributionResult:
    """Leave-one-out values ``u(N) - u(N minus i)`` (``n + 1`` evaluations).

    Cheap, but not a Shapley value: it is not efficient, and two clients that carry the
    same information each get the little that the other cannot replace.

    Args:
        players: client ids (distinct).
        utility: ``u(coalition) -> float``, higher is better.
    """
    ids = _players(players)
    u = CachedUtility(utility)
    everyone = frozenset(ids)
    full = u(everyone)
    values = {i: full - u(everyone - {i}) for i in ids}
    return ContributionResult(values=values, evaluations=u.evaluations, method="loo")


def _guided_permutation(ids: Sequence[str], k: int, rng: random.Random) -> list[str]:
    """Permutation number ``k`` (0-based): player ``k mod n`` first, the rest shuffled.

    GTG-Shapley's guided sampling: each player leads equally often, so the marginal
    gains over the empty coalition (usually the largest) are sampled evenly.
    """
    lead = ids[k % len(ids)]
    rest = [p for p in ids if p != lead]
    rng.shuffle(rest)
    return [lead, *rest]


def gtg_shapley(
    players: Iterable[str],
    utility: Utility,
    *,
    epsilon: float = 1e-3,
    round_threshold: float = 1e-3,
    max_permutations: int = 100,
    convergence_tol: float = 0.05,
    seed: int = 0,
) -> ContributionResult:
    """GTG-Shapley estimates (Liu et al. 2022, "GTG-Shapley: Efficient and Accurate
    Participant Contribution Evaluation in Federated Learning", Algorithm 1).

    Permutations are sampled with guided first positions (permutation ``k`` starts with
    player ``k mod n``; the rest are shuffled with ``random.Random(seed)``). Walking a
    permutation, the marginal gain of each player is ``u(S + i) - u(S)``; once the prefix
    is within ``epsilon`` of the full coalition (``|u(all) - u(S)| < epsilon``) the rest
    of the permutation gets zero marginals and is not evaluated (within-round
    truncation). If ``|u(all) - u(empty)| < round_threshold`` the round changed nothing
    worth sharing and every value is 0 (between-round truncation; 2 evaluations).
    Utilities are memoised, so a coalition reached by several permutations costs once.

    Convergence: after each full rotation of leaders (every ``n`` permutations) the
    running means are compared with those one rotation earlier; sampling stops when the
    largest change is below ``convergence_tol * |u(all) - u(empty)|`` (a tolerance
    relative to the round's total gain, which by efficiency is the scale of the values).

    Args:
        players: client ids (distinct).
        utility: ``u(coalition) -> float``, higher is better.
        epsilon: within-round truncation margin, in utility units (>= 0; 0 disables).
        round_threshold: between-round truncation threshold, in utility units (>= 0).
        max_permutations: hard cap on sampled permutations (>= 1).
        convergence_tol: relative change of the running means that counts as converged
            (> 0).
        seed: seeds the permutation order; same inputs and seed give the same result.

    Raises:
        ConfigError: a parameter out of range, or duplicate ids.
    """
    ids = _players(players)
    if epsilon < 0:
        raise ConfigError(f"gtg epsilon must be >= 0, got {epsilon}; use e.g. 1e-3")
    if round_threshold < 0:
        raise ConfigError(f"gtg round_threshold must be >= 0, got {round_threshold}; use e.g. 1e-3")
    if max_permutations < 1:
        raise ConfigError(f"gtg max_permutations must be >= 1, got {max_permutations}")
    if convergence_tol <= 0:
        raise ConfigError(f"gtg convergence_tol must be > 0, got {convergence_tol}; use e.g. 0.05")
    u = CachedUtility(utility)
    n = len(ids)
    empty, everyone = frozenset(), frozenset(ids)
    v_empty = u(empty)
    if n == 0:
        return ContributionResult(values={}, evaluations=u.evaluations, method="gtg", converged=True)
    v_full = u(everyone)
    total_gain = v_full - v_empty
    if abs(total_gain) < round_threshold:
        return ContributionResult(
            values=dict.fromkeys(ids, 0.0),
            evaluations=u.evaluations,
            method="gtg",
            converged=True,
            round_truncated=True,
        )
    rng = random.Random(seed)
    sums = dict.fromkeys(ids, 0.0)  # sum over permutations of each player's marginal gain
    previous: dict[str, float] | None = None  # running means one rotation ago
    converged = False
    k = 0
    while k < max_permutations:
        order = _guided_permutation(ids, k, rng)
        prefix: frozenset[str] = empty
        v_prev = v_empty
        for player in order:
            if abs(v_full - v_prev) < epsilon:
                break  # truncated: this and later players add 0 to this permutation
            prefix = prefix | {player}
            v_next = u(prefix)
            sums[player] += v_next - v_prev
            v_prev = v_next
        k += 1
        if k % n == 0:
            means = {p: sums[p] / k for p in ids}
            if previous is not None:
                change = max(abs(means[p] - previous[p]) for p in ids)
                if change < convergence_tol * abs(total_gain):
                    converged = True
                    break
            previous = means
    values = {p: sums[p] / k for p in ids}
    return ContributionResult(
        values=values, evaluations=u.evaluations, method="gtg", permutations=k, converged=converged
    )


def cumulative(results: Sequence[ContributionResult]) -> dict[str, float]:
    """Sum each client's per-round values over rounds (absent rounds count 0).

    Clients appear in order of first appearance.
    """
    total: dict[str, float] = {}
    for result in results:
        for cid, value in result.values.items():
            total[cid] = total.get(cid, 0.0) + value
    return total


def flag_negative(values: Mapping[str, float], *, tol: float = 0.0) -> list[str]:
    """Client ids whose contribution is below ``-tol`` (hurt the model), most negative first.

    Args:
        values: client id -> contribution (one round's ``values`` or ``cumulative``).
        tol: slack (>= 0) so that Monte-Carlo noise around 0 is not flagged.
    """
    if tol < 0:
        raise ConfigError(f"flag_negative tol must be >= 0, got {tol}")
    flagged = [cid for cid, v in values.items() if v < -tol]
    return sorted(flagged, key=lambda cid: values[cid])
