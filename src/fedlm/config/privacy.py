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

Where the noise comes from (``mode``): the trusted server (``central``), or the clients,
whose shares only protect the *secure* sum: continuous Gaussian shares (``distributed``),
or the distributed discrete Gaussian (``ddgauss``; Kairouz, Liu and Steinke 2021) or
Skellam (``skellam``; Agarwal, Kairouz and Liu 2021) over SecAgg+'s integer ring.
:func:`check_trust` refuses client noise without secure aggregation.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedlm.config.audit import OneRunAuditConfig
from fedlm.errors import ConfigError

CLIENT_NOISE_MODES = ("distributed", "ddgauss", "skellam")  # noise shares added by clients
DISCRETE_MODES = ("ddgauss", "skellam")  # integer noise over SecAgg+'s ring (privacy.distributed)


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


class DistributedDpConfig(BaseModel):
    """The discrete mechanisms' knobs (``privacy.mode`` ``ddgauss`` or ``skellam``).

    Their ring is SecAgg+'s, ``Z_{2^b}`` with ``b = secure_aggregation.modulus_bits``: one
    setting, so the modulus always matches the mechanism. The granularity ``gamma``
    (update units per integer step) is the finest whose wrap-around bound stays under
    ``wrap_probability`` unless given (Kairouz et al. 2021, Sec. 4; TFF's
    ``DistributedDpSumFactory`` makes the same trade).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(
        math.exp(-0.5), ge=0, lt=1,
        description="Conditional rounding parameter in [0, 1) (TFF's exp(-0.5)); 0 disables conditioning.",
    )
    wrap_probability: float = Field(
        1e-6, gt=0, lt=1,
        description="Largest allowed probability that a round's integer sum wraps mod 2^b (chooses gamma).",
    )
    gamma: float | None = Field(
        None, gt=0, description="Fixed granularity (update units per integer step); null: the finest that fits."
    )


class PrivacyConfig(BaseModel):
    """Client-level DP: clipping, noise (central, Gaussian shares, or discrete shares over
    SecAgg+), secret sampling, accounting and the one-run audit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Apply client-level DP (clip, noise, account).")
    mode: Literal["central", "distributed", "ddgauss", "skellam"] = Field(
        "central",
        description="'central': the server adds all noise to the sum (trusted server). "
        "'distributed': each client adds a Gaussian share before secure aggregation; "
        "'ddgauss' / 'skellam': each client adds discrete noise in SecAgg+'s integer ring "
        "(Kairouz et al. 2021 / Agarwal et al. 2021). The client modes need secure aggregation.",
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="z: noise std over the sensitivity of the sum (e.g. 1.0); "
        "ddgauss/skellam: the sum's noise std over clip_norm.",
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
        description="w_max >= 1 for weighting='capped' (examples per client counted at most).",
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
        "draws it from the OS (always leave it null in a deployment: anyone who reads "
        "config.yaml could subtract the noise, and the summary says so).",
    )
    sampling_key: Literal["secret", "public"] = Field(
        "secret",
        description="'secret': cohorts come from a key drawn from the OS, kept in the run "
        "directory (mode 0600) and the checkpoint, so amplification by sampling holds against "
        "whoever reads the run's outputs. 'public': cohorts come from federation.seed "
        "(reproducible, recomputable from config.yaml), and epsilon is reported without amplification.",
    )
    distributed: DistributedDpConfig = Field(
        default_factory=DistributedDpConfig,
        description="The discrete mechanisms' knobs (mode ddgauss or skellam).",
    )
    audit: OneRunAuditConfig = Field(
        default_factory=OneRunAuditConfig,
        description="Client-level one-run audit: an empirical lower bound on epsilon next to the accountant's.",
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
        if self.max_weight is not None and not self.max_weight >= 1:
            raise ValueError(
                f"privacy.max_weight={self.max_weight!r} must be >= 1: a client's weight is "
                "min(num_examples, max_weight) and every client has at least one example, so a "
                "smaller cap gives weights above it (secure aggregation folds in integer weight 1); "
                "set max_weight >= 1"
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
        client_noise = self.mode in CLIENT_NOISE_MODES
        if client_noise and self.weighting != "uniform":
            raise ValueError(
                f"privacy.mode={self.mode!r} needs privacy.weighting='uniform' (got 'capped'): the "
                "server only sees the masked sum and cannot weight it; use uniform weighting"
            )
        if client_noise and self.adaptive_clipping:
            raise ValueError(
                f"privacy.mode={self.mode!r} does not support privacy.adaptive_clipping=true: the "
                "unclipped-count bits would reach the server in the clear; use a fixed clip_norm "
                "or mode='central'"
            )
        if not client_noise and self.min_honest_fraction != 1.0:
            raise ValueError(
                f"privacy.min_honest_fraction={self.min_honest_fraction!r} only applies to the client "
                f"noise modes {list(CLIENT_NOISE_MODES)}; set privacy.mode or leave it at 1.0"
            )
        if self.mode in DISCRETE_MODES and self.accountant != "rdp":
            raise ValueError(
                f"privacy.mode={self.mode!r} is accounted with its own Renyi-DP bound (Kairouz et al. "
                f"2021, Agarwal et al. 2021); privacy.accountant={self.accountant!r} does not apply: use 'rdp'"
            )
        if self.mode in DISCRETE_MODES and self.sampling == "fixed":
            raise ValueError(
                f"privacy.mode={self.mode!r} has a Poisson-sampling bound only; privacy.sampling='fixed' "
                "would claim an amplification nothing proves: use sampling='poisson' or 'none'"
            )
        if self.mode not in DISCRETE_MODES and self.distributed != DistributedDpConfig():
            raise ValueError(
                f"privacy.distributed only applies to privacy.mode 'ddgauss' or 'skellam' (got {self.mode!r}); "
                "set the mode or remove privacy.distributed"
            )
        if self.audit.enabled and self.dp_sgd.enabled and not self.enabled:
            raise ValueError(
                "privacy.audit audits client-level DP, but only sample-level DP-SGD is on: its epsilon "
                "is not the one the audit bounds; set privacy.enabled=true or turn privacy.audit off"
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


def check_trust(config: Any) -> None:
    """Cross-section trust checks of client-level DP on a whole ``ExperimentConfig``.

    * Client noise (``distributed``, ``ddgauss``, ``skellam``) protects only a sum the
      server cannot see into: without secure aggregation the server sees each update with
      ``1 / sqrt(k)`` of the noise, so the config is refused.
    * The discrete mechanisms encode the update themselves (rotate, scale, round): the
      upload codec must be ``fp32`` and error feedback off; Gaussian shares are added before
      the codec, whose rounding error would grow with the noise: ``fp32`` only.
    * Under secure aggregation no server re-clip follows the codec, so error feedback
      (which adds last round's codec error after the clip) is refused.

    Raises:
        ConfigError: naming the fields, the values, why, and the fix.
    """
    p, sa, comp = config.privacy, config.secure_aggregation, config.compression
    if not p.enabled:
        return
    if p.mode in CLIENT_NOISE_MODES and not sa.enabled:
        raise ConfigError(
            f"privacy.mode={p.mode!r} needs secure_aggregation.enabled=true: each client adds only a "
            "share of the noise, so without secure aggregation the server sees every update with noise "
            "std z C / sqrt(k) and the reported epsilon would not hold against it; enable secure "
            "aggregation or use privacy.mode='central' (a trusted server adds all the noise)"
        )
    if p.mode in DISCRETE_MODES and (comp.upload != "fp32" or comp.error_feedback):
        raise ConfigError(
            f"privacy.mode={p.mode!r} encodes the update itself (rotation, scaling, rounding to SecAgg+'s "
            f"ring); compression.upload={comp.upload!r} with error_feedback={comp.error_feedback} would "
            "change it first: set compression.upload=fp32 and compression.error_feedback=false"
        )
    if p.mode == "distributed" and comp.upload != "fp32":
        raise ConfigError(
            f"privacy.mode='distributed' with compression.upload={comp.upload!r}: the codec would round the "
            "noised update, with an error that grows with the noise, so no norm bound holds for what is "
            "summed; use compression.upload=fp32, or privacy.mode='ddgauss' (which rounds with a proven bound)"
        )
    if sa.enabled and comp.error_feedback:
        raise ConfigError(
            "compression.error_feedback=true under client-level DP and secure aggregation adds last round's "
            "codec error to the clipped update after the clip, and no server re-clip can follow the masked "
            "sum: the sensitivity bound would fail; set compression.error_feedback=false"
        )

