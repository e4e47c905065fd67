"""What client-level DP fixes before the first round, from public quantities only.

DP-FedAvg (McMahan et al. 2018) releases ``(sum_i w_i clip(delta_i) + noise) / D``; its
guarantee rests on values that must not depend on any client's data or on who was sampled:

* the sampling rate ``q = k / N`` and whether amplification by sampling may be claimed:
  only with a secret cohort (``privacy.sampling_key: secret``, :mod:`fedlm.privacy.sampling`);
* the denominator ``D``: the expected cohort size ``k`` (uniform weights) or ``k w_max``
  (capped weights: every weight is at most ``w_max``, a public bound; the expected total
  weight ``q sum_k min(n_k, w_max)`` would depend on private example counts);
* the sensitivity ``S = (C + margin) w``: the clip norm plus how much encoding can grow
  the norm of what is summed (:func:`fedlm.privacy.noise.encoding_margin`);
* the noise: ``z`` given or calibrated for the planned rounds (Gaussian modes), or the
  discrete mechanism's ``(gamma, sigma)`` for SecAgg+'s ring (Kairouz et al. 2021;
  Agarwal et al. 2021), calibrated the same way.

:func:`plan_dp` computes them; :class:`DpPlan` also builds the run's ledgers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scipy.stats import binom

from fedlm.errors import ConfigError
from fedlm.privacy.accountant import PrivacyAccountant, calibrate_noise_multiplier
from fedlm.privacy.distributed.calibration import distributed_dp_params, wraparound_probability
from fedlm.privacy.distributed.ledger import DistributedLedger
from fedlm.privacy.distributed.mechanism import DistributedDpParams
from fedlm.privacy.distributed.stages import honest_shares
from fedlm.privacy.noise import encoding_margin

DISCRETE = ("ddgauss", "skellam")


@dataclasses.dataclass(frozen=True)
class DpPlan:
    """The public, data-independent values of a client-level DP run (see the module docstring)."""

    mode: str
    accountant: str
    sampling: str
    amplified: bool
    population: int
    cohort_size: int
    sample_rate: float | None
    denominator: float
    clip_norm: float
    margin: float
    sensitivity: float
    noise_multiplier: float
    noise_source: str
    delta: float
    min_honest_fraction: float
    clipped_count_stddev: float | None
    discrete: DistributedDpParams | None = None
    wrap_probability: float | None = None

    @property
    def accounted_sampling(self) -> str:
        """The sampling the release accountant may claim: none without a secret cohort."""
        return self.sampling if self.amplified else "none"

    def release_accountant(self) -> PrivacyAccountant:
        """The ledger of epsilon against whoever sees the run's outputs (Gaussian modes)."""
        return self._accountant(self.accountant, self.accounted_sampling)

    def server_accountant(self) -> PrivacyAccountant:
        """Against the server, which chose the cohort: the same rounds without amplification."""
        return self._accountant("rdp", "none")

    def _accountant(self, kind: str, sampling: str) -> PrivacyAccountant:
        return PrivacyAccountant(
            kind, sampling, noise_multiplier=self.noise_multiplier, delta=self.delta,
            sample_rate=self.sample_rate if sampling == "poisson" else None,
            cohort_size=self.cohort_size if sampling == "fixed" else None, population=self.population,
            clipped_count_stddev=self.clipped_count_stddev,
        )

    def ledger(self) -> DistributedLedger:
        """The discrete mechanisms' ledger (both epsilons come from it)."""
        p = self.discrete
        if p is None:
            raise ConfigError(f"privacy.mode={self.mode!r} has no distributed ledger")
        return DistributedLedger(p.mechanism, clip=p.clip, gamma=p.gamma, noise_stddev=p.noise_stddev, dim=p.dim,
                                 beta=p.beta, delta=self.delta,
                                 sample_rate=self.sample_rate if self.amplified else None)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (
            "mode", "sampling", "amplified", "population", "sample_rate", "denominator", "margin", "sensitivity",
            "min_honest_fraction")}
        out["expected_cohort_size"] = float(self.cohort_size)
        out["encoding_margin"] = out.pop("margin")
        if self.discrete is not None:
            out["distributed"] = {**self.discrete.to_dict(), "wrap_probability": self.wrap_probability,
                                  "l2_sensitivity_integer": self.discrete.l2_bound}
        return out


def plan_dp(config: Any, *, population: int, cohort_size: int, dim: int) -> DpPlan:
    """The :class:`DpPlan` of an experiment with ``privacy.enabled``.

    Args:
        config: the ``ExperimentConfig``.
        population: ``N``, the number of clients (public).
        cohort_size: ``k``, the planned cohort (``q = k / N``).
        dim: ``d``, the number of trainable values an update has (an upper bound on the
            shared ones: the margin grows with it).

    Raises:
        ConfigError: an unreachable ``target_epsilon`` or parameters the mechanism refuses.
    """
    p, sa, comp, fed = config.privacy, config.secure_aggregation, config.compression, config.federation
    n, k = population, cohort_size
    amplified = p.sampling_key == "secret" and p.sampling != "none"
    q = k / n if p.sampling != "none" else None
    w = float(p.max_weight) if p.weighting == "capped" else 1.0
    margin = 0.0
    if sa.enabled and p.mode not in DISCRETE:  # no server re-clip after the codec and SecAgg+'s rounding
        fixed = comp.upload_params.get("fixed_scale")
        margin = encoding_margin(dim=dim, clip_norm=p.clip_norm, codec=comp.upload,
                                 fixed_scale=None if fixed is None else float(fixed),
                                 secagg_bits=sa.bits, secagg_clip_range=sa.clip_range)
    sigma_b = p.clipped_count_stddev if p.adaptive_clipping else None
    common = dict(mode=p.mode, accountant=p.accountant, sampling=p.sampling, amplified=amplified, population=n,
                  cohort_size=k, sample_rate=q, denominator=float(k) * w, clip_norm=float(p.clip_norm),
                  margin=margin, sensitivity=(float(p.clip_norm) + margin) * w, delta=float(p.delta),
                  min_honest_fraction=float(p.min_honest_fraction), clipped_count_stddev=sigma_b)
    calibrate = p.target_epsilon is not None and p.on_budget_exhausted != "stop"
    if p.mode in DISCRETE:
        return _discrete(config, common, calibrate=calibrate, dim=dim)
    if calibrate:
        sampling = p.sampling if amplified else "none"
        z = calibrate_noise_multiplier(
            p.target_epsilon, p.delta, fed.rounds, kind=p.accountant, sampling=sampling,
            sample_rate=q if sampling == "poisson" else None, cohort_size=k if sampling == "fixed" else None,
            population=n, clipped_count_stddev=sigma_b,
        )
        return DpPlan(**common, noise_multiplier=z, noise_source="calibrated")
    return DpPlan(**common, noise_multiplier=float(p.noise_multiplier), noise_source="given")


def _discrete(config: Any, common: dict[str, Any], *, calibrate: bool, dim: int) -> DpPlan:
    p, fed = config.privacy, config.federation
    k, q = common["cohort_size"], common["sample_rate"]
    shares = honest_shares(k, p.min_honest_fraction)
    # The most clients a round may sum (Poisson cohorts vary): the wrap-around bound covers them.
    most = k if p.sampling != "poisson" else int(binom.ppf(1.0 - 1e-6, common["population"], q))
    bits = config.secure_aggregation.modulus_bits
    rate = q if (common["amplified"] and q is not None) else 1.0
    kw = dict(clip=float(p.clip_norm), dim=dim, num_clients=shares, delta=float(p.delta), rounds=fed.rounds,
              bits=bits, sample_rate=rate, beta=p.distributed.beta, wrap_probability=p.distributed.wrap_probability,
              cohort_size=max(most, k), rel_tol=0.02)
    sigma = None if calibrate else float(p.noise_multiplier) * float(p.clip_norm)
    if p.distributed.gamma is None:
        params = distributed_dp_params(p.mode, target_epsilon=p.target_epsilon if calibrate else None,
                                       noise_stddev=sigma, **kw)
    else:
        from fedlm.privacy.distributed.accounting import calibrate_noise_stddev

        gamma = float(p.distributed.gamma)
        if sigma is None:
            sigma = calibrate_noise_stddev(p.mode, p.target_epsilon, p.delta, fed.rounds, clip=float(p.clip_norm),
                                           gamma=gamma, num_clients=shares, dim=dim, beta=p.distributed.beta,
                                           sample_rate=rate)
        params = DistributedDpParams(mechanism=p.mode, clip=float(p.clip_norm), dim=dim, num_clients=shares,
                                     gamma=gamma, noise_stddev=sigma, bits=bits, beta=p.distributed.beta)
    wrap = wraparound_probability(params, cohort_size=max(most, k))
    if not math.isfinite(wrap) or wrap > 0.5:
        raise ConfigError(
            f"privacy.distributed.gamma={params.gamma:g} overflows SecAgg+'s ring of {bits} bits (wrap-around "
            f"probability bound {wrap:.3g}); raise secure_aggregation.modulus_bits or leave gamma unset"
        )
    common = {**common, "sensitivity": params.gamma * params.l2_bound}  # the rounded vector's norm, update units
    return DpPlan(**common, noise_multiplier=params.noise_stddev / float(p.clip_norm),
                  noise_source="calibrated" if calibrate else "given", discrete=params, wrap_probability=wrap)


__all__ = ["DISCRETE", "DpPlan", "plan_dp"]
