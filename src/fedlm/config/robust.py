"""Config of the robust aggregation stage, and the checks that need no tensors.

This module must not import torch: the config layer validates a whole experiment
(including "which aggregators cannot follow secure aggregation") before any model or
tensor exists. The aggregation math in ``fedlm.aggregation.robust`` reuses
``check_assumptions`` and ``trim_count`` from here so the rules live in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.errors import ConfigError
from fedlm.registry import Registry


@dataclass(frozen=True)
class Assumption:
    """What an aggregator assumes of a round of ``n`` updates with ``f`` Byzantine ones.

    Attributes:
        per_byzantine, base: it needs ``n >= per_byzantine * f + base`` (the bound under which
            its paper proves the guarantee).
        bound: that bound in words, for the error message.
        individual: whether it must see each client's update (so no secure aggregation).
    """

    per_byzantine: int = 0
    base: int = 1
    bound: str = "n >= 1"
    individual: bool = True


HONEST_MAJORITY = Assumption(2, 1, "n >= 2f+1 (an honest majority)")

# The robust aggregators: name -> the stage class (imported when a run builds one) and its
# assumption. This table is the single source of aggregator names: configs, the CLI and the
# stage factory all read it. A new aggregator is one file plus one line here.
AGGREGATORS: Registry = Registry("aggregator")
AGGREGATORS.register("median", "fedlm.aggregation.robust_stages:MedianStage", info=HONEST_MAJORITY)
AGGREGATORS.register("trimmed_mean", "fedlm.aggregation.robust_stages:TrimmedMeanStage", info=Assumption())
AGGREGATORS.register("krum", "fedlm.aggregation.robust_stages:KrumStage", info=Assumption(2, 3, "n >= 2f+3"))
AGGREGATORS.register("multi_krum", "fedlm.aggregation.robust_stages:MultiKrumStage", info=Assumption(2, 3, "n >= 2f+3"))
AGGREGATORS.register("bulyan", "fedlm.aggregation.robust_stages:BulyanStage", info=Assumption(4, 3, "n >= 4f+3"))
AGGREGATORS.register("geomed", "fedlm.aggregation.robust_stages:GeomedStage", info=HONEST_MAJORITY)
AGGREGATORS.register("norm_bound", "fedlm.aggregation.robust_stages:NormBoundStage", info=Assumption())
AGGREGATORS.register("fltrust", "fedlm.aggregation.robust_stages:FLTrustStage", info=Assumption())
AGGREGATORS.register("flame", "fedlm.aggregation.robust_stages:FlameStage", info=HONEST_MAJORITY)
AGGREGATORS.register("interquartile_mean", "fedlm.aggregation.interquartile:InterquartileMeanStage",
                     info=Assumption(4, 1, "n >= 4f+1 (at most a quarter Byzantine)"))


def needs_individual_updates(name: str, *, client_side_norm_bound: bool = False) -> bool:
    """Whether aggregator ``name`` must see each client's update (so no secure aggregation).

    Every robust aggregator reads individual client updates (distances, norms, order
    statistics), which secure aggregation hides from the server. The one exception is norm
    bounding done on the clients: each client clips its own delta before masking and the
    server only needs the sum.

    Args:
        name: an aggregator name ("fedavg" or one of ``AGGREGATORS``).
        client_side_norm_bound: for "norm_bound", whether clients clip before masking.
    """
    if name == "norm_bound" and client_side_norm_bound:
        return False
    return name in AGGREGATORS and AGGREGATORS.info(name).individual


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

    The bounds are each aggregator's registered :class:`Assumption`, the ones under which
    its paper proves the guarantee: median, geometric median and FLAME need an honest
    majority (n >= 2f + 1); Krum and multi-Krum need n >= 2f + 3 (Blanchard et al. 2017);
    Bulyan needs n >= 4f + 3 (El Mhamdi et al. 2018); trimmed mean needs
    f <= floor(beta n) < n / 2 (Yin et al. 2018, checked here with its parameters).
    "fedavg", "norm_bound" and "fltrust" only need n >= 1 (fedavg tolerates no Byzantine
    client; f is then informational).

    Args:
        name: aggregator name.
        n: number of updates in the round (cohort size after dropouts and rejections).
        f: number of Byzantine updates the aggregator must tolerate.
        trim_fraction: beta for "trimmed_mean" (required for it).
        multi_krum_m: m for "multi_krum" (None means n - f).

    Raises:
        ConfigError: with the violated bound, the values and how to fix it.
    """
    if name != "fedavg" and name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; choose one of {['fedavg', *AGGREGATORS.names()]}")
    if f < 0:
        raise ConfigError(f"{name}: num_byzantine f must be >= 0, got f={f}")
    if n < 1:
        raise ConfigError(
            f"{name} needs at least one update, got n={n}; check dropouts and rejections"
        )
    rule = AGGREGATORS.info(name) if name != "fedavg" else Assumption()
    if n < rule.per_byzantine * f + rule.base:
        raise ConfigError(f"{name} needs {rule.bound}: got n={n}, f={f}; lower f or sample more clients")
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

    aggregator: str = Field(
        "fedavg", description="'fedavg' (weighted mean, no defence) or a robust aggregator name (AGGREGATORS)."
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
        description="fltrust: size of the root dataset, as a fraction of the honest clients' pooled training "
        "examples it is sampled from in simulation.",
    )
    flame_noise_lambda: float = Field(
        0.001, ge=0.0, description="flame: noise std as a multiple of the median update norm."
    )

    @field_validator("aggregator")
    @classmethod
    def _known_aggregator(cls, v: str) -> str:
        if v != "fedavg" and v not in AGGREGATORS:
            raise ValueError(f"robust.aggregator={v!r} is unknown; choose one of {['fedavg', *AGGREGATORS.names()]}")
        return v

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
