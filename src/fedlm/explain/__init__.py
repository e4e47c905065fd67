"""Explaining federated rounds: which client contributed what.

Shapley-value estimators (exact, GTG-Shapley, leave-one-out) over a coalition utility, and
coalition models rebuilt from one round's stored updates.
"""

from fedlm.explain.coalitions import coalition_aggregate, round_contributions
from fedlm.explain.contribution import (
    ContributionResult,
    cumulative,
    exact_shapley,
    flag_negative,
    gtg_shapley,
    leave_one_out,
)

__all__ = [
    "ContributionResult",
    "coalition_aggregate",
    "cumulative",
    "exact_shapley",
    "flag_negative",
    "gtg_shapley",
    "leave_one_out",
    "round_contributions",
]
