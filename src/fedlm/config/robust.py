"""Config of the robust aggregation stage, and the checks that need no tensors.

This module must not import torch: the config layer validates a whole experiment
(including "which aggregators cannot follow secure aggregation") before any model or
tensor exists. The aggregation math in ``fedlm.aggregation.robust`` reuses
``check_assumptions`` and ``trim_count`` from here so the rules live in one place.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedlm.errors import ConfigError

# Names of the robust aggregators, as registered in fedlm.aggregation.robust_stages.
ROBUST_AGGREGATORS: tuple[str, ...] = (
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geomed",
    "norm_bound",
    "fltrust",
    "flame",
)

# Every robust aggregator reads individual client updates (distances, norms, order
# statistics), which secure aggregation hides from the server. The one exception is
# norm bounding done on the clients: each client clips its own delta before masking
# and the server only needs the sum. See ``needs_individual_updates``.
NEEDS_INDIVIDUAL_UPDATES: frozenset[str] = frozenset(ROBUST_AGGREGATORS)

AggregatorName = Literal[
    "fedavg",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geomed",
    "norm_bound",
    "fltrust",
    "flame",
]


def needs_individual_updates(name: str, *, client_side_norm_bound: bool = False) -> bool:
    """Whether aggregator ``name`` must see each client's update (so no secure aggregation).

    Args:
        name: an aggregator name ("fedavg" or one of ``ROBUST_AGGREGATORS``).
        client_side_norm_bound: for "norm_bound", whether clients clip before masking.
    """
    if name == "norm_bound" and client_side_norm_bound:
        return False
    return name in NEEDS_INDIVIDUAL_UPDATES


def trim_count(n: int, trim_fraction: float) -> int:
    """Updates trimmed from each end per coordinate: ``floor(trim_fraction * n)``.

    A tiny slack keeps float products such as ``0.29 * 100 = 28.999...`` at 29.
    """
    return math.floor(trim_fraction * n + 1e-9)


def check_assumptions(
    name: str,
    n: int,
    *,
    f: int = 0,
    trim_fraction: float | None = None,
    multi_krum_m: int | None = None,
) -> None:
    """Raise ``ConfigError`` when aggregator ``name`` cannot tolerate ``f`` of ``n`` updates.

    The bounds are the ones under which each paper proves its guarantee:
    median, geometric median and FLAME need an honest majority (n >= 2f + 1);
    trimmed mean needs f <= floor(beta n) < n / 2 (Yin et al. 2018); Krum and
    multi-Krum need n >= 2f + 3 (Blanchard et al. 2017); Bulyan needs n >= 4f + 3
    (El Mhamdi et al. 2018). "fedavg", "norm_bound" and "fltrust" only need n >= 1
    (fedavg tolerates no Byzantine client; f is then informational).

    Args:
        name: aggregator name.
        n: number of updates in the round (cohort size after dropouts and rejections).
        f: number of Byzantine updates the aggregator must tolerate.
        trim_fraction: beta for "trimmed_mean" (required for it).
        multi_krum_m: m for "multi_krum" (None means n - f).

    Raises:
        ConfigError: with the violated bound, the values and how to fix it.
    """
    known = ("fedavg", *ROBUST_AGGREGATORS)
    if name not in known:
        raise ConfigError(f"unknown aggregator {name!r}; choose one of {list(known)}")
    if f < 0:
        raise ConfigError(f"{name}: num_byzantine f must be >= 0, got f={f}")
    if n < 1:
        raise ConfigError(
            f"{name} needs at least one update, got n={n}; check dropouts and rejections"
        )
    fix = "lower f or sample more clients"
    if name in ("median", "geomed", "flame") and n < 2 * f + 1:
        raise ConfigError(f"{name} needs n >= 2f+1 (an honest majority): got n={n}, f={f}; {fix}")
    if name in ("krum", "multi_krum") and n < 2 * f + 3:
        raise ConfigError(f"{name} needs n >= 2f+3: got n={n}, f={f}; {fix}")
    if name == "bulyan" and n < 4 * f + 3:
        raise ConfigError(f"bulyan needs n >= 4f+3: got n={n}, f={f}; {fix}")
    if name == "multi_krum" and multi_krum_m is not None and not 1 <= multi_krum_m <= n - f:
        raise ConfigError(
            f"multi_krum needs 1 <= m <= n-f: got m={multi_krum_m}, n={n}, f={f}; "
            f"set multi_krum_m to at most {n - f} or leave it unset (n-f)"
        )
    if name == "trimmed_mean":
        if trim_fraction is None or not 0.0 <= trim_fraction < 0.5:
            raise ConfigError(
                f"trimmed_mean needs 0 <= trim_fraction < 0.5, got {trim_fraction}; "
                "0.1 trims 10% from each end"
            )
        k = trim_count(n, trim_fraction)
        if n <= 2 * k:
            raise ConfigError(
                f"trimmed_mean needs n > 2*floor(beta*n): got n={n}, beta={trim_fraction}; "
                "lower trim_fraction"
            )
        if f > k:
            raise ConfigError(
                f"trimmed_mean with trim_fraction={trim_fraction} trims k={k} per side of n={n} "
                f"updates but f={f}; raise trim_fraction to at least f/n={f / n:.3g} or lower f"
            )


class RobustConfig(BaseModel):
    """How the server aggregates client deltas, and how many Byzantine clients it assumes.

    Fields that belong to one aggregator are ignored by the others, except
    ``norm_bound_client_side``, which changes what composes with secure aggregation and
    is therefore rejected unless ``aggregator == "norm_bound"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    aggregator: AggregatorName = Field(
        "fedavg", description="'fedavg' (weighted mean, no defence) or a robust aggregator name."
    )
    num_byzantine: int = Field(
        0, ge=0, description="f: Byzantine clients per round the aggregator must tolerate."
    )
    trim_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="trimmed_mean: beta, fraction trimmed from each end."
    )
    multi_krum_m: int | None = Field(
        None, ge=1, description="multi_krum: updates averaged (m); unset means n - f."
    )
    norm_bound: float | None = Field(
        None,
        gt=0.0,
        description="norm_bound: L2 bound on each delta; unset means the cohort's median norm.",
    )
    norm_bound_client_side: bool = Field(
        False,
        description="norm_bound: clients clip to norm_bound before masking (composes with secagg).",
    )
    geomed_max_iter: int = Field(100, ge=1, description="geomed: maximum Weiszfeld iterations.")
    geomed_tol: float = Field(
        1e-6,
        gt=0.0,
        description="geomed: stop when the objective changes by less than tol (relative).",
    )
    geomed_smoothing: float = Field(
        1e-6, gt=0.0, description="geomed: nu, the smallest distance used in a Weiszfeld weight."
    )
    fltrust_root_fraction: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="fltrust: fraction of the server's data used as the root dataset.",
    )
    flame_noise_lambda: float = Field(
        0.001, ge=0.0, description="flame: noise std as a multiple of the median update norm."
    )

    @model_validator(mode="after")
    def _check_client_side(self) -> RobustConfig:
        if self.norm_bound_client_side and self.aggregator != "norm_bound":
            raise ValueError(
                "robust.norm_bound_client_side=true only applies to "
                "robust.aggregator='norm_bound', "
                f"got aggregator={self.aggregator!r}; set norm_bound_client_side to false"
            )
        if self.norm_bound_client_side and self.norm_bound is None:
            raise ValueError(
                "robust.norm_bound_client_side=true needs a fixed robust.norm_bound (clients "
                "cannot see the cohort's median norm); set robust.norm_bound to a positive number"
            )
        return self

    @property
    def needs_individual_updates(self) -> bool:
        """Whether the configured aggregator must see each client's update."""
        return needs_individual_updates(
            self.aggregator, client_side_norm_bound=self.norm_bound_client_side
        )

    def check_cohort(self, n: int) -> None:
        """Raise ``ConfigError`` if ``n`` updates per round cannot meet the aggregator's bound."""
        check_assumptions(
            self.aggregator,
            n,
            f=self.num_byzantine,
            trim_fraction=self.trim_fraction,
            multi_krum_m=self.multi_krum_m,
        )

    def check_secure_aggregation(self, enabled: bool) -> None:
        """Raise ``ConfigError`` if secure aggregation is on and the aggregator needs each update.

        Args:
            enabled: whether the experiment uses secure aggregation.
        """
        if enabled and self.needs_individual_updates:
            raise ConfigError(
                f"robust.aggregator={self.aggregator!r} needs each client's update, which secure "
                "aggregation hides from the server; what composes with secure aggregation is "
                "client-side norm bounding (robust.aggregator='norm_bound', "
                "robust.norm_bound_client_side=true, robust.norm_bound=<bound>) or 'fedavg'; "
                "otherwise turn secure aggregation off"
            )
