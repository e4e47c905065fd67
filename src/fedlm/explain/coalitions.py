"""Coalition models from one round's stored updates, and per-round contributions.

The model a coalition S would have produced in round t is rebuilt from the updates the
server already holds, without retraining: the FedAvg mean of S's deltas applied to the
round's starting global state (GTG-Shapley's reconstruction, Liu et al. 2022, "GTG-Shapley:
Efficient and Accurate Participant Contribution Evaluation in Federated Learning"; the
same idea as the per-round reconstruction of Song et al. 2019, "Profit Allocation for
Federated Learning"). Evaluating that model on a server-side validation split gives the
coalition's utility; the estimators in ``fedlm.explain.contribution`` turn utilities into
per-client values.

The reconstruction is a plain FedAvg step (server learning rate 1). Under a server
optimizer with momentum or adaptive steps the real round moved the model differently;
contributions then rank the clients' deltas, not the optimizer's step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Literal

import torch

from fedlm.aggregation.fedavg import weighted_mean
from fedlm.errors import ConfigError
from fedlm.explain.contribution import (
    EXACT_MAX_PLAYERS,
    ContributionResult,
    exact_shapley,
    gtg_shapley,
    leave_one_out,
)
from fedlm.stages import TensorDict

Method = Literal["gtg", "loo", "exact"]


def coalition_aggregate(
    global_state: TensorDict,
    updates: Mapping[str, TensorDict],
    weights: Mapping[str, float],
    coalition: Collection[str],
) -> TensorDict:
    """The round's model had only ``coalition`` taken part: ``global + FedAvg(deltas of S)``.

    ``FedAvg(S) = sum_{i in S} w_i delta_i / sum_{i in S} w_i`` (McMahan et al. 2017),
    weights renormalised inside the coalition. Tensors the deltas do not touch are
    copied unchanged; the result is a fresh dict of fresh tensors in the global dtypes.

    Args:
        global_state: the round's starting global tensors (name -> tensor).
        updates: client id -> delta tensors (same names and shapes as in global_state).
        weights: client id -> FedAvg weight (e.g. num_examples), >= 0.
        coalition: client ids; empty gives (a copy of) the starting state.

    Raises:
        ConfigError: a coalition member without an update or weight, a negative weight,
            a coalition whose weights sum to 0, or a delta that does not match the state.
    """
    members = sorted(coalition)
    out = {name: t.detach().clone() for name, t in global_state.items()}
    if not members:
        return out
    for cid in members:
        if cid not in updates or cid not in weights:
            raise ConfigError(
                f"coalition member {cid!r} has no stored update or weight; known clients: "
                f"{sorted(updates)}"
            )
        if weights[cid] < 0:
            raise ConfigError(f"weight of client {cid!r} is {weights[cid]}; weights must be >= 0")
    total = sum(float(weights[cid]) for cid in members)
    if total <= 0:
        raise ConfigError(
            f"the weights of coalition {members} sum to {total}; give each client a positive "
            "weight (e.g. its num_examples)"
        )
    mean = weighted_mean([updates[cid] for cid in members], [float(weights[cid]) for cid in members])
    for name, step in mean.items():
        if name not in out:
            raise ConfigError(f"delta tensor {name!r} is not in the global state; check the update")
        if step.shape != out[name].shape:
            raise ConfigError(
                f"delta {name!r} has shape {tuple(step.shape)} but the global tensor has "
                f"{tuple(out[name].shape)}"
            )
        out[name] = out[name] + step.to(out[name].dtype)
    return out


def round_contributions(
    global_state: TensorDict,
    updates: Mapping[str, TensorDict],
    weights: Mapping[str, float],
    *,
    evaluate: Callable[[TensorDict], float],
    method: Method = "gtg",
    epsilon: float = 1e-3,
    round_threshold: float = 1e-3,
    max_permutations: int = 100,
    convergence_tol: float = 0.05,
    seed: int = 0,
    max_players: int = EXACT_MAX_PLAYERS,
) -> ContributionResult:
    """Each client's contribution to one round, from the updates the server stored.

    The utility of a coalition S is ``evaluate(coalition_aggregate(global_state, updates,
    weights, S))``, memoised per coalition. The empty coalition is the starting model, so
    the values of the Shapley methods sum to about ``evaluate(new model) -
    evaluate(starting model)``.

    Args:
        global_state: the round's starting global tensors.
        updates: client id -> delta tensors, for the clients whose updates were aggregated.
        weights: client id -> FedAvg weight.
        evaluate: model tensors -> utility, higher is better (e.g. minus the validation
            loss); called once per distinct coalition.
        method: "gtg" (GTG-Shapley), "loo" (leave-one-out) or "exact" (all 2**n coalitions).
        epsilon, round_threshold, max_permutations, convergence_tol, seed: GTG-Shapley
            parameters, see ``fedlm.explain.contribution.gtg_shapley``.
        max_players: exact Shapley's cohort bound, see ``exact_shapley``.

    Raises:
        ConfigError: an unknown method, mismatched clients, or an estimator's own checks.
    """
    if set(weights) != set(updates):
        raise ConfigError(
            f"updates and weights must name the same clients: updates {sorted(updates)}, "
            f"weights {sorted(weights)}"
        )
    players = sorted(updates)

    def utility(coalition: frozenset[str]) -> float:
        with torch.no_grad():
            return float(evaluate(coalition_aggregate(global_state, updates, weights, coalition)))

    if method == "gtg":
        return gtg_shapley(
            players,
            utility,
            epsilon=epsilon,
            round_threshold=round_threshold,
            max_permutations=max_permutations,
            convergence_tol=convergence_tol,
            seed=seed,
        )
    if method == "loo":
        return leave_one_out(players, utility)
    if method == "exact":
        return exact_shapley(players, utility, max_players=max_players)
    raise ConfigError(f"unknown contribution method {method!r}; choose 'gtg', 'loo' or 'exact'")
