"""Clipping client updates to a norm bound, fixed or adaptive.

Client-level DP (DP-FedAvg; McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models") bounds each client's influence on the round's sum by
clipping its whole update, all tensors taken together as one vector, to L2 norm ``C``.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping") moves ``C`` towards a target quantile ``gamma`` of the clients' update norms
with a geometric step driven by a noised fraction of unclipped clients. The fraction is
a second private release, so the noise budget ``z`` is split between the update sum and
the count (:func:`split_noise_multiplier`).

Everything here is a pure function; the stages in :mod:`fedlm.privacy.stages` hold state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedlm.errors import ConfigError
from fedlm.stages import TensorDict


def global_l2_norm(tensors: TensorDict) -> float:
    """L2 norm of all tensors flattened and concatenated into one vector.

    Computed in float64 so that the norm of a float16/bfloat16 update is not itself
    rounded to a value below the true norm (which would let a clipped update exceed C).

    Args:
        tensors: parameter name -> tensor of any shape.

    Returns:
        The norm, a Python float (0.0 for an empty dict).
    """
    total = 0.0
    for t in tensors.values():
        total += float(t.detach().to(torch.float64).pow(2).sum())
    return math.sqrt(total)


def clip_update(tensors: TensorDict, clip_norm: float) -> tuple[TensorDict, float]:
    """Scale an update by ``min(1, C / ||update||)`` (McMahan et al. 2018, Alg. 1).

    The input is not modified. Tensors keep their dtype and device.

    Args:
        tensors: the update, parameter name -> tensor.
        clip_norm: the bound ``C`` (> 0), same units as the update.

    Returns:
        ``(clipped, pre_clip_norm)``; ``clipped`` has global L2 norm ``<= C``.

    Raises:
        ConfigError: ``clip_norm`` is not a positive finite number.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(
            f"clip_norm must be a positive finite number, got {clip_norm!r}; use e.g. 1.0"
        )
    norm = global_l2_norm(tensors)
    if not math.isfinite(norm):
        raise ConfigError(
            f"update norm is {norm!r} (NaN or inf in the update); fix the local training "
            "(lower the learning rate) before clipping"
        )
    if norm <= clip_norm:
        return {k: v.clone() for k, v in tensors.items()}, norm
    # The tiny shrink guards against the scaled tensor rounding back above C in low
    # precision dtypes; it changes the update by at most one part in 1e6.
    scale = clip_norm / norm * (1.0 - 1e-6)
    clipped = {k: (v.to(torch.float64) * scale).to(v.dtype) for k, v in tensors.items()}
    # Rounding to float16/bfloat16 (half an ulp is up to 2^-9 relative) can still
    # overshoot; shrink a little more until the bound holds. Geometric, so it ends.
    after = global_l2_norm(clipped)
    while after > clip_norm:
        fix = clip_norm / after * (1.0 - 2.0**-7)
        clipped = {k: (v.to(torch.float64) * fix).to(v.dtype) for k, v in clipped.items()}
        after = global_l2_norm(clipped)
    return clipped, norm


def split_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """Noise multiplier for the update sum when adaptive clipping spends part of ``z``.

    Andrew et al. (2021), Sec. 3.1: the count of unclipped clients is released as
    ``sum_i (b_i - 1/2) + N(0, sigma_b^2)``, a Gaussian mechanism with sensitivity 1/2,
    i.e. noise multiplier ``2 sigma_b``. Two Gaussian releases on the same cohort with
    multipliers ``z_delta`` and ``2 sigma_b`` compose to one with multiplier
    ``(z_delta^-2 + (2 sigma_b)^-2)^-1/2``. Setting that equal to ``z`` gives::

        z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)

    Args:
        noise_multiplier: the total ``z`` the accountant is planned for (> 0).
        clipped_count_stddev: ``sigma_b``, std of the noise on the count (> 0).

    Returns:
        ``z_delta > z``, the multiplier for the update sum's noise.

    Raises:
        ConfigError: ``2 sigma_b <= z`` (the count alone would spend the whole budget).
    """
    z, sb = noise_multiplier, clipped_count_stddev
    if not (math.isfinite(z) and z > 0):
        raise ConfigError(f"noise_multiplier must be > 0, got {z!r}")
    if not (math.isfinite(sb) and sb > 0):
        raise ConfigError(
            f"clipped_count_stddev must be > 0, got {sb!r}; Andrew et al. use cohort_size / 20"
        )
    rest = z**-2 - (2.0 * sb) ** -2
    if rest <= 0:
        raise ConfigError(
            f"clipped_count_stddev={sb!r} is too small for noise_multiplier={z!r}: the count "
            f"release alone would spend the whole budget (need 2*clipped_count_stddev > "
            f"noise_multiplier, i.e. clipped_count_stddev > {z / 2:g}); raise it (Andrew et al. "
            "use expected cohort size / 20) or raise noise_multiplier"
        )
    return rest**-0.5


def unclipped_fraction(norms: Sequence[float], clip_norm: float) -> float:
    """Fraction of norms ``<= clip_norm`` (no noise); 0.0 for an empty list."""
    if len(norms) == 0:
        return 0.0
    return sum(1 for n in norms if n <= clip_norm) / len(norms)


def noisy_unclipped_fraction(
    unclipped: Sequence[float],
    expected_count: float,
    *,
    stddev: float,
    generator: torch.Generator | None = None,
) -> float:
    """Private estimate of the fraction of clients whose norm was ``<= C``.

    Andrew et al. (2021), Alg. 1: ``b = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2``
    with ``m`` the *expected* cohort size (public), so adding or removing one client moves
    the noised sum by at most 1/2.

    Args:
        unclipped: per-client indicators ``b_i`` in {0, 1}.
        expected_count: ``m`` (> 0), the expected number of clients in the cohort.
        stddev: ``sigma_b`` (>= 0); 0 gives the exact fraction for testing.
        generator: torch RNG for the noise (seeded for reproducibility).

    Returns:
        The noised fraction (may fall outside [0, 1]).
    """
    if expected_count <= 0:
        raise ConfigError(f"expected_count must be > 0, got {expected_count!r}")
    if stddev < 0:
        raise ConfigError(f"clipped_count_stddev must be >= 0, got {stddev!r}")
    centred = sum(float(b) - 0.5 for b in unclipped)
    noise = 0.0
    if stddev > 0:
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * stddev
    return (centred + noise) / expected_count + 0.5


def adaptive_clip_update(
    clip_norm: float,
    unclipped_fraction_estimate: float,
    *,
    target_quantile: float,
    clip_lr: float,
) -> float:
    """One geometric step of the clipping norm (Andrew et al. 2021, Eq. 4).

    ``C <- C * exp(-eta_C * (b - gamma))``: if more than ``gamma`` of the clients were
    unclipped, ``C`` shrinks, otherwise it grows. The step is multiplicative so that C
    stays positive and the rate is scale free.

    Args:
        clip_norm: current ``C`` (> 0).
        unclipped_fraction_estimate: ``b``, the (noised) fraction with norm ``<= C``.
        target_quantile: ``gamma`` in (0, 1).
        clip_lr: ``eta_C`` (> 0); Andrew et al. use 0.2.

    Returns:
        The next clipping norm.
    """
    if not 0.0 < target_quantile < 1.0:
        raise ConfigError(
            f"target_quantile must be in (0, 1), got {target_quantile!r}; use e.g. 0.5"
        )
    if not clip_lr > 0:
        raise ConfigError(f"clip_lr must be > 0, got {clip_lr!r}; Andrew et al. use 0.2")
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be > 0, got {clip_norm!r}")
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction_estimate - target_quantile))
