"""Config of contribution evaluation: who contributed what in each round.

The estimators live in ``fedlm.explain`` (GTG-Shapley: Liu et al. 2022, "GTG-Shapley:
Efficient and Accurate Participant Contribution Evaluation in Federated Learning"). This
module must not import torch, so an experiment is validated before any tensor exists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fedlm.errors import ConfigError

# Exact Shapley rebuilds and evaluates 2**n coalition models per round; 8 clients = 256.
EXACT_MAX_COHORT = 8


class ExplainConfig(BaseModel):
    """Per-round client contributions, measured on a server-side validation split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    contribution: Literal["gtg", "loo", "exact", "off"] = Field(
        "off",
        description="'gtg' (GTG-Shapley, sampled), 'loo' (leave-one-out, n+1 evaluations), "
        f"'exact' (all 2**n coalitions, cohorts of at most {EXACT_MAX_COHORT}) or 'off'.",
    )
    gtg_epsilon: float = Field(
        1e-3,
        ge=0.0,
        description="GTG within-round truncation: stop a permutation once its prefix is "
        "within this much utility (e.g. validation loss, nats) of the full cohort; 0 disables.",
    )
    gtg_round_threshold: float = Field(
        1e-3,
        ge=0.0,
        description="GTG between-round truncation: all contributions are 0 when the round "
        "changed the utility by less than this.",
    )
    gtg_max_permutations: int = Field(
        100, ge=1, description="GTG: most permutations sampled per round."
    )
    gtg_convergence_tol: float = Field(
        0.05,
        gt=0.0,
        description="GTG: stop when the running means move by less than this fraction of "
        "the round's total utility gain over one rotation of leading clients.",
    )
    validation_size: int = Field(
        64,
        ge=1,
        description="Held-out examples the server evaluates each coalition model on.",
    )
    negative_tol: float = Field(
        0.0,
        ge=0.0,
        description="Flag a client when its contribution is below -negative_tol.",
    )
    seed: int = Field(0, description="Seeds GTG's permutation sampling.")
    validation_clients: list[str] | None = Field(
        None,
        description="Clients whose held-out examples form the server's validation split "
        "(None: every client's); the split is the first validation_size of them, pooled.",
    )
    keep_updates: bool = Field(
        False,
        description="Save each round's starting global tensors and decoded client deltas "
        "under RUN_DIR/explain/ so `fedlm explain contribution RUN_DIR` can run after the "
        "fact. The server holds these deltas anyway (no secure aggregation); the files "
        "hold no raw text, but they are as sensitive as the updates.",
    )

    def check_cohort(self, n: int) -> None:
        """Raise ``ConfigError`` when the method cannot handle cohorts of up to ``n`` clients.

        Args:
            n: the largest number of clients whose updates a round can aggregate
                (e.g. ``federation.clients_per_round``).
        """
        if n < 0:
            raise ConfigError(f"cohort size must be >= 0, got {n}")
        if self.contribution == "exact" and n > EXACT_MAX_COHORT:
            raise ConfigError(
                f"explain.contribution='exact' evaluates 2**n coalition models per round and "
                f"is limited to cohorts of {EXACT_MAX_COHORT}, but a round can hold {n} clients "
                f"({2**n} evaluations); use explain.contribution='gtg' or sample at most "
                f"{EXACT_MAX_COHORT} clients per round"
            )


def check_explain(config) -> None:
    """Cross-section checks for an ``ExperimentConfig``: cohort bound and secure aggregation.

    Raises:
        ConfigError: exact Shapley over cohorts larger than 8, or contributions (or kept
            updates) with secure aggregation, where the server only ever sees the sum.
    """
    ex = config.explain
    if ex.contribution == "off" and not ex.keep_updates:
        return
    if config.secure_aggregation.enabled:
        raise ConfigError(
            "explain.contribution and explain.keep_updates need each client's update, but "
            "secure_aggregation.enabled=true shows the server only their sum; set "
            "explain.contribution=off and explain.keep_updates=false, or turn secure "
            "aggregation off"
        )
    k = config.federation.clients_per_round
    if k is not None:
        ex.check_cohort(k)
