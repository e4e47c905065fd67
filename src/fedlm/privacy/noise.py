"""The Gaussian mechanism of DP-FedAvg: sensitivity, weights, central and distributed noise.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", Alg. 1) releases ``(sum_i w_i * clip(delta_i, C) + N(0, (z * S)^2 I)) / D``:

* ``S`` is the L2 sensitivity of the weighted sum to adding or removing one client:
  ``C`` for uniform weights (``w_i = 1``), ``C * w_max`` for example-count weights capped
  at ``w_max`` (``w_i = min(n_i, w_max)``; McMahan et al.'s ``w_k = min(n_k / w_hat, 1)``
  is the same estimator scaled by ``w_max``).
* ``D`` is a *public, data-independent* denominator: the expected cohort size ``q * N``
  (uniform) or the expected total weight ``q * sum_k min(n_k, w_max)`` (capped). Dividing
  by the realised cohort size or weight instead would make the denominator depend on who
  took part and break the sensitivity bound above (McMahan et al.'s ``f_c`` estimator needs
  a different, larger bound).
* ``z`` is the noise multiplier the accountant is given.

Central mode: a trusted server adds all the noise to the sum. Distributed mode: each of the
``k`` clients in the cohort adds a share ``N(0, (z S)^2 / k)`` before secure aggregation,
so the ``k`` shares sum to ``N(0, (z S)^2)`` and the server never sees an un-noised sum.

Trust assumption of distributed mode: if only ``h`` of the ``k`` clients are honest (the
others leave their share out, or drop out), the noise in the sum has only ``h/k`` of the
planned variance, so the guarantee is that of noise multiplier ``z * sqrt(h/k)``. Pass
``min_honest_fraction = f`` (the fraction you are willing to assume honest and online) to
scale each share's variance by ``1/f``: the sum of any ``f * k`` honest shares then has
std ``z S`` and the accountant's ``z`` holds. With all ``k`` honest the sum is noisier
than needed by a factor ``1/sqrt(f)`` in std, the price of the assumption.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from fedlm.errors import ConfigError
from fedlm.privacy.clipping import global_l2_norm
from fedlm.stages import TensorDict


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (reduced to 63 bits)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) % (2**63))
    return g


def client_seed(round_seed: int, client_id: str, *, purpose: str = "dp-noise") -> int:
    """Stable per-client seed from the round seed and the client id.

    Uses SHA-256, not Python's ``hash()``, which is salted per process and would make a
    resumed or distributed run draw different noise.
    """
    digest = hashlib.sha256(f"{purpose}|{int(round_seed)}|{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits, non-negative


def sensitivity(
    clip_norm: float, *, weighting: str = "uniform", max_weight: float | None = None
) -> float:
    """L2 sensitivity ``S`` of the weighted sum of clipped updates (add/remove one client).

    Args:
        clip_norm: ``C`` (> 0).
        weighting: "uniform" (``S = C``) or "capped" (``S = C * max_weight``).
        max_weight: ``w_max`` (> 0), required for "capped".
    """
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be > 0, got {clip_norm!r}")
    if weighting == "uniform":
        return float(clip_norm)
    if weighting == "capped":
        if max_weight is None or not max_weight > 0:
            raise ConfigError(
                f"weighting='capped' needs max_weight > 0, got {max_weight!r}; set privacy.max_weight"
            )
        return float(clip_norm) * float(max_weight)
    raise ConfigError(f"weighting must be 'uniform' or 'capped', got {weighting!r}")


def encoding_margin(
    *,
    dim: int,
    clip_norm: float,
    codec: str,
    fixed_scale: float | None = None,
    secagg_bits: int | None = None,
    secagg_clip_range: float | None = None,
) -> float:
    """How much the L2 norm of a clipped update can grow before it is summed.

    Without secure aggregation the server re-clips each decoded update to ``C``
    (:class:`~fedlm.privacy.stages.DpMeanStage`), so nothing grows: pass ``secagg_bits=None``
    and the margin is 0. Under secure aggregation no re-clip can follow, and the vector
    summed is the clipped update after the upload codec and SecAgg+'s quantisation, each of
    which moves every coordinate by less than its own worst case:

    * ``fp32``: 0; ``fp16``: ``2^-11 |x_j|`` or the half-ulp ``2^-25`` of a subnormal;
      ``bf16``: ``2^-8 |x_j|`` or ``2^-134``;
    * ``int8`` / ``int4`` at ``fixed_scale`` ``s``: stochastic rounding to ``s / 127`` or
      ``s / 7`` steps, less than one step (:mod:`fedlm.compression.quantize`);
    * SecAgg+: less than one step ``2 c / (2^b - 1)`` (times ``1 + LEVEL_SLACK``) of its
      ``b``-bit quantisation in ``[-c, c]``, after clipping each coordinate to ``[-c, c]``
      (which only shrinks the norm).

    So ``||x_summed|| <= C + margin`` with ``margin = rel C + sqrt(dim) * abs``: the
    accounted sensitivity is ``C + margin`` (``(C + margin) w_max`` with capped weights).

    Raises:
        ConfigError: a codec without a bound (it is not secure-aggregation compatible).
    """
    from fedlm.privacy.secagg.quantize import LEVEL_SLACK, step_size

    if secagg_bits is None:
        return 0.0
    rel, per_coord = {"fp32": (0.0, 0.0), "fp16": (2.0**-11, 2.0**-25), "bf16": (2.0**-8, 2.0**-134)}.get(
        codec, (None, None))
    if rel is None:
        levels = {"int8": 127, "int4": 7}.get(codec)
        if levels is None or fixed_scale is None:
            raise ConfigError(
                f"compression.upload={codec!r} has no norm bound under secure aggregation; use fp32, fp16, "
                "bf16, or int8/int4 with a shared fixed_scale"
            )
        rel, per_coord = 0.0, float(fixed_scale) / levels * (1.0 + LEVEL_SLACK)  # float32 arithmetic
    per_coord += step_size(bits=secagg_bits, clip=float(secagg_clip_range)) * (1.0 + LEVEL_SLACK)
    return rel * float(clip_norm) + math.sqrt(dim) * per_coord


def capped_weights(num_examples: Sequence[int], max_weight: float) -> list[float]:
    """Per-client weights ``min(n_i, w_max)`` (McMahan et al. 2018, Sec. 3).

    Capping bounds one client's share of the weighted sum, so a client with many
    examples cannot dominate, and the sensitivity is ``C * w_max``.
    """
    if not max_weight > 0:
        raise ConfigError(f"max_weight must be > 0, got {max_weight!r}")
    out = []
    for n in num_examples:
        if n < 0:
            raise ConfigError(f"num_examples must be >= 0, got {n!r}")
        out.append(float(min(n, max_weight)))
    return out


def central_noise_std(noise_multiplier: float, sens: float) -> float:
    """Std of the noise added once to the sum: ``z * S``."""
    _check_z(noise_multiplier)
    return float(noise_multiplier) * float(sens)


def distributed_noise_std(
    noise_multiplier: float, sens: float, cohort_size: int, *, min_honest_fraction: float = 1.0
) -> float:
    """Std of one client's share: ``z * S / sqrt(k * f)`` (see the module docstring).

    Args:
        noise_multiplier: ``z`` (> 0).
        sens: ``S``, the sensitivity of the sum.
        cohort_size: ``k``, clients whose shares are summed.
        min_honest_fraction: ``f`` in (0, 1]; shares are scaled so that any ``f * k`` of them
            already sum to std ``z * S``.
    """
    _check_z(noise_multiplier)
    if cohort_size < 1:
        raise ConfigError(f"cohort_size must be >= 1, got {cohort_size!r}")
    if not 0.0 < min_honest_fraction <= 1.0:
        raise ConfigError(
            f"min_honest_fraction must be in (0, 1], got {min_honest_fraction!r}; "
            "use 1.0 if all clients are trusted to add noise"
        )
    return float(noise_multiplier) * float(sens) / math.sqrt(cohort_size * min_honest_fraction)


def gaussian_noise_like(
    tensors: TensorDict, std: float, *, generator: torch.Generator
) -> TensorDict:
    """Independent ``N(0, std^2)`` noise shaped like each tensor.

    Drawn in float32 on the CPU in sorted-name order, so the same generator state gives the
    same noise regardless of dict order or device; then cast to each tensor's dtype/device.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise std must be a finite number >= 0, got {std!r}")
    out: TensorDict = {}
    for name in sorted(tensors):
        t = tensors[name]
        n = torch.randn(t.shape, generator=generator, dtype=torch.float32) * std
        out[name] = n.to(dtype=t.dtype, device=t.device)
    return {name: out[name] for name in tensors}


def add_gaussian_noise(
    tensors: TensorDict, std: float, *, generator: torch.Generator
) -> TensorDict:
    """``tensors + N(0, std^2)`` elementwise (in float32, cast back); input not modified."""
    noise = gaussian_noise_like(tensors, std, generator=generator)
    out: TensorDict = {}
    for name, t in tensors.items():
        out[name] = (t.to(torch.float32) + noise[name].to(device=t.device, dtype=torch.float32)).to(
            t.dtype
        )
    return out


def dp_weighted_mean(
    updates: Sequence[TensorDict],
    weights: Sequence[float],
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    max_weight: float = 1.0,
    generator: torch.Generator,
) -> TensorDict:
    """The DP-FedAvg release: ``(sum_i w_i delta_i + N(0, (z C w_max)^2)) / D``.

    McMahan et al. (2018), Alg. 1 with the fixed-denominator estimator ``f_f``. Uniform
    weighting is ``weights = [1] * k``, ``max_weight = 1`` and ``D`` the expected cohort
    size; capped weighting is ``weights = capped_weights(n, w_max)``, ``max_weight = w_max``
    and ``D`` the expected total weight. ``D`` must not depend on the realised cohort.

    Args:
        updates: clipped client updates (each global L2 norm ``<= clip_norm``), same keys.
        weights: one weight per update, each in ``[0, max_weight]``.
        clip_norm: ``C`` the updates were clipped to.
        noise_multiplier: ``z`` (> 0) the accountant is given.
        denominator: ``D`` (> 0), public.
        max_weight: ``w_max``, the bound on every weight.
        generator: torch RNG for the noise.

    Returns:
        The noised mean, keyed like the updates (float32).

    Raises:
        ConfigError: an update exceeds ``clip_norm`` or a weight exceeds ``max_weight``
            (either would void the sensitivity bound), or the arguments are invalid.
    """
    if len(updates) != len(weights):
        raise ConfigError(
            f"got {len(updates)} updates and {len(weights)} weights; pass one weight per update"
        )
    if not denominator > 0:
        raise ConfigError(
            f"denominator must be > 0, got {denominator!r}; use the expected cohort size or weight"
        )
    if len(updates) == 0:
        raise ConfigError("dp_weighted_mean needs at least one update to know the tensor shapes")
    sens = sensitivity(clip_norm, weighting="capped", max_weight=max_weight)
    names = list(updates[0])
    total: TensorDict = {k: torch.zeros_like(updates[0][k], dtype=torch.float32) for k in names}
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        if not 0.0 <= w <= max_weight:
            raise ConfigError(
                f"weight {i} is {w!r}, outside [0, max_weight={max_weight!r}]; cap it with capped_weights"
            )
        norm = global_l2_norm(u)
        if norm > clip_norm * (1.0 + 1e-6):
            raise ConfigError(
                f"update {i} has norm {norm:.6g} > clip_norm {clip_norm!r}; clip it with clip_update first"
            )
        if set(u) != set(names):
            raise ConfigError(f"update {i} has keys {sorted(u)}, expected {sorted(names)}")
        for k in names:
            total[k] += float(w) * u[k].to(torch.float32)
    noised = add_gaussian_noise(
        total, central_noise_std(noise_multiplier, sens), generator=generator
    )
    return {k: v / float(denominator) for k, v in noised.items()}


def _check_z(noise_multiplier: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(
            f"noise_multiplier must be a positive finite number, got {noise_multiplier!r}; use e.g. 1.0"
        )
