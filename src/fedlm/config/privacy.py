"""Config of client-level differential privacy (DP-FedAvg) and its accountant.

DP-FedAvg: McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models"; adaptive clipping: Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping". The math lives in ``fedlm.privacy``; this module must not import torch
so that a whole experiment can be validated before any tensor exists.

How the noise is chosen:

* ``noise_multiplier`` alone: that ``z`` is used; epsilon is reported, there is no budget.
* ``target_epsilon`` alone (``on_budget_exhausted`` unset or "calibrate"): ``z`` is
  calibrated before training so the planned rounds end at or just under the target.
* ``noise_multiplier`` and ``target_epsilon`` with ``on_budget_exhausted="stop"``: ``z``
  is used as given and training stops before the first round whose completion would take
  epsilon past ``target_epsilon`` (the budget is a cap, not a plan).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedlm.errors import ConfigError


class DpSgdConfig(BaseModel):
    """Sample-level DP-SGD inside each client (Abadi et al. 2016), with Opacus.

    Per-example gradients of the trainable (LoRA) parameters are clipped to
    ``max_grad_norm`` and noised with std ``noise_multiplier * max_grad_norm`` at every
    local step; each step draws a Poisson batch (rate ``batch_size / examples``). Opacus's
    RDP accountant gives each client's epsilon at ``delta`` over all its steps so far.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Train each client with DP-SGD (Opacus).")
    noise_multiplier: float = Field(
        1.0, gt=0, description="sigma: noise std over max_grad_norm at each local step."
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="Per-example gradient clipping bound (L2, trainable parameters)."
    )
    delta: float = Field(
        1e-5, gt=0, lt=1, description="delta of each client's (epsilon, delta) guarantee."
    )


class PrivacyConfig(BaseModel):
    """Client-level DP: clipping, Gaussian noise (central or distributed) and accounting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Apply client-level DP (clip, noise, account).")
    mode: Literal["central", "distributed"] = Field(
        "central",
        description="'central': the server adds all noise to the sum (trusted server). "
        "'distributed': each client adds a share before secure aggregation.",
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="z: noise std over the sensitivity of the sum (e.g. 1.0)."
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="Privacy budget epsilon at `delta` (calibrates z, or caps the run)."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="Target delta; must be below 1/num_clients.")
    clip_norm: float = Field(
        1.0, gt=0, description="C: L2 bound on each client's whole update (initial C if adaptive)."
    )
    adaptive_clipping: bool = Field(
        False,
        description="Move C towards the target_quantile of update norms (Andrew et al. 2021).",
    )
    target_quantile: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Adaptive clipping: gamma, the quantile of update norms C tracks.",
    )
    clip_lr: float = Field(
        0.2, gt=0, description="Adaptive clipping: eta_C, the geometric step size of C."
    )
    clipped_count_stddev: float | None = Field(
        None,
        gt=0,
        description="Adaptive clipping: sigma_b, noise std on the unclipped count "
        "(Andrew et al. use expected clients per round / 20); must exceed z/2.",
    )
    accountant: Literal["rdp", "pld"] = Field(
        "rdp",
        description="'rdp' (Renyi DP) or 'pld' (privacy loss distributions, tighter, slower).",
    )
    sampling: Literal["poisson", "fixed", "none"] = Field(
        "poisson",
        description="How the cohort is drawn, for amplification: 'poisson' (each client with "
        "probability q), 'fixed' (k of N without replacement, rdp only), 'none' (no amplification).",
    )
    on_budget_exhausted: Literal["stop", "calibrate"] | None = Field(
        None,
        description="With target_epsilon: 'calibrate' (default) picks z so the planned rounds "
        "fit the budget; 'stop' uses the given noise_multiplier and stops at the budget.",
    )
    weighting: Literal["uniform", "capped"] = Field(
        "uniform",
        description="'uniform': sum / expected cohort size, sensitivity C. 'capped': weights "
        "min(num_examples, max_weight) / expected total weight, sensitivity C * max_weight.",
    )
    max_weight: float | None = Field(
        None,
        gt=0,
        description="w_max for weighting='capped' (examples per client counted at most).",
    )
    min_honest_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Distributed mode: fraction of the cohort trusted to add its noise share; "
        "shares are scaled up so that this fraction alone gives the full noise.",
    )
    noise_seed: int | None = Field(
        None,
        description="Fixed secret of the DP noise, for reproducible simulations only; null "
        "draws it from the OS (always leave it null in a deployment).",
    )
    dp_sgd: DpSgdConfig = Field(
        default_factory=DpSgdConfig,
        description="Sample-level DP-SGD inside each client (independent of `enabled`).",
    )

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        z, eps = self.noise_multiplier, self.target_epsilon
        if self.enabled:
            if self.on_budget_exhausted == "stop":
                if z is None or eps is None:
                    raise ValueError(
                        "privacy.on_budget_exhausted='stop' needs both privacy.noise_multiplier "
                        f"(the noise to use, got {z!r}) and privacy.target_epsilon (the budget "
                        f"that stops training, got {eps!r}); set both, or use 'calibrate' with "
                        "target_epsilon only"
                    )
            elif (z is None) == (eps is None):
                raise ValueError(
                    "set exactly one of privacy.noise_multiplier and privacy.target_epsilon "
                    f"(got noise_multiplier={z!r}, target_epsilon={eps!r}); to use both, set "
                    "privacy.on_budget_exhausted='stop'"
                )
            if self.on_budget_exhausted == "calibrate" and eps is None:
                raise ValueError(
                    "privacy.on_budget_exhausted='calibrate' needs privacy.target_epsilon "
                    "(got None); set it or leave on_budget_exhausted unset"
                )
        if self.adaptive_clipping and self.clipped_count_stddev is None:
            raise ValueError(
                "privacy.adaptive_clipping=true needs privacy.clipped_count_stddev (got None); "
                "Andrew et al. use the expected clients per round / 20"
            )
        if not self.adaptive_clipping and self.clipped_count_stddev is not None:
            raise ValueError(
                f"privacy.clipped_count_stddev={self.clipped_count_stddev!r} only applies with "
                "privacy.adaptive_clipping=true; set adaptive_clipping or unset clipped_count_stddev"
            )
        sigma_b = self.clipped_count_stddev
        if self.adaptive_clipping and z is not None and sigma_b is not None and 2.0 * sigma_b <= z:
            raise ValueError(
                f"privacy.clipped_count_stddev={sigma_b!r} is too small for "
                f"privacy.noise_multiplier={z!r}: the count release would spend the whole "
                f"budget; set clipped_count_stddev above {z / 2:g} (ideally several times)"
            )
        if self.weighting == "capped" and self.max_weight is None:
            raise ValueError(
                "privacy.weighting='capped' needs privacy.max_weight (got None); set it, e.g. 100"
            )
        if self.weighting == "uniform" and self.max_weight is not None:
            raise ValueError(
                f"privacy.max_weight={self.max_weight!r} only applies to privacy.weighting='capped'; "
                "set weighting='capped' or unset max_weight"
            )
        if self.mode == "distributed" and self.weighting != "uniform":
            raise ValueError(
                "privacy.mode='distributed' needs privacy.weighting='uniform' (got 'capped'): the "
                "server only sees the masked sum and cannot weight it; use uniform weighting"
            )
        if self.mode == "distributed" and self.adaptive_clipping:
            raise ValueError(
                "privacy.mode='distributed' does not support privacy.adaptive_clipping=true: the "
                "unclipped-count bits would reach the server in the clear; use a fixed clip_norm "
                "or mode='central'"
            )
        if self.mode == "central" and self.min_honest_fraction != 1.0:
            raise ValueError(
                f"privacy.min_honest_fraction={self.min_honest_fraction!r} only applies to "
                "privacy.mode='distributed'; set mode='distributed' or leave it at 1.0"
            )
        if self.accountant == "pld" and self.sampling == "fixed":
            raise ValueError(
                "privacy.accountant='pld' does not support privacy.sampling='fixed' (dp-accounting's "
                "PLD accountant has no sampling without replacement); use accountant='rdp' with "
                "'fixed', or sampling='poisson' with 'pld'"
            )
        return self

    def check_population(self, num_clients: int) -> None:
        """Cross-check against the federation: ``delta`` must be below ``1 / num_clients``.

        Raises:
            ConfigError: with the bound and a suggested delta.
        """
        if num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {num_clients!r}")
        if self.enabled and self.delta >= 1.0 / num_clients:
            raise ConfigError(
                f"privacy.delta must be below 1/num_clients = {1.0 / num_clients:.3g}, got "
                f"{self.delta!r}; use privacy.delta <= {0.1 / num_clients:.1g}"
            )


def check_experiment(
    privacy: PrivacyConfig,
    *,
    robust_aggregator: str,
    known_clients: int | None,
    lm_format: bool | None,
    canaries: int,
) -> None:
    """Cross-section checks of ``privacy`` and ``audit`` that need no data.

    Args:
        privacy: the privacy section.
        robust_aggregator: ``robust.aggregator`` ("fedavg" when none).
        known_clients: an upper bound on the number of clients when the config fixes it
            (``data.num_clients`` or ``data.max_clients``), else None; the exact count is
            checked again once the data is built (``check_population``).
        lm_format: False when ``data.format`` is "instruction", True for "lm", None for "auto".
        canaries: ``audit.canaries``.

    Raises:
        ValueError: with the field path, the value and the fix (pydantic wraps it).
    """
    if privacy.enabled and robust_aggregator != "fedavg":
        raise ValueError(
            f"privacy.enabled=true needs robust.aggregator='fedavg' (got {robust_aggregator!r}): "
            "a robust aggregator's output is not a clipped sum, so its sensitivity is unknown "
            "and the noise would not give the accounted epsilon; use one or the other"
        )
    if privacy.enabled and known_clients is not None and privacy.delta >= 1.0 / known_clients:
        raise ValueError(
            f"privacy.delta must be below 1/num_clients = {1.0 / known_clients:.3g} (at most "
            f"{known_clients} clients), got {privacy.delta!r}; use privacy.delta <= "
            f"{0.1 / known_clients:.1g}"
        )
    if canaries and lm_format is False:
        raise ValueError(
            f"audit.canaries={canaries} plants LM text, but data.format='instruction' trains "
            "on answers only; use data.format='lm' (or 'auto' on plain text) or audit.canaries=0"
        )
