"""DP-FedAvg as pipeline stages: clip and noise share on clients; noise, adaptive C on the server.

Thin wrappers over :mod:`fedlm.privacy.clipping` and :mod:`fedlm.privacy.noise` (McMahan
et al. 2018; Andrew et al. 2021). Stages are frozen dataclasses: their fields are
configuration, and anything that changes between rounds lives in the state they return.

Values the server sets travel in the round plan's :class:`DpRound` (the ``C`` clients
clip to this round, which the server takes from :meth:`AdaptiveClipStage.clip_norm` when
adaptive clipping is on, and ``m`` for the adaptive-clipping count) and
:class:`~fedlm.aggregation.fedavg.FixedDenominator` (the public ``D`` the weighted sum is
divided by: the expected cohort size or expected total weight).

Noise seeds. A seed the adversary knows lets it regenerate and subtract the noise, and
``RoundPlan.seed`` is sent to every client. So every noise stage mixes a secret seed, kept
in its own state, into ``plan.seed`` (and the client id) with SHA-256. ``init()`` draws the
secret from the OS unless ``secret_seed`` is given; give it only in simulations that must be
reproducible, never in a deployment.
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.config.privacy import PrivacyConfig
from fedlm.errors import PipelineError
from fedlm.privacy.clipping import (
    adaptive_clip_update,
    clip_update,
    noisy_unclipped_fraction,
    split_noise_multiplier,
)
from fedlm.privacy.noise import (
    add_gaussian_noise,
    capped_weights,
    central_noise_std,
    client_seed,
    distributed_noise_std,
    make_generator,
    sensitivity,
)
from fedlm.stages import ClientUpdate, CohortValue, PlanField, RoundPlan

# Metric a clipped update carries to the server: 1.0 if its norm was <= C, else 0.0.
# Only the bit travels (Andrew et al.'s b_i); the norm itself stays on the client.
UNCLIPPED_METRIC = "dp/unclipped"


@dataclass(frozen=True)
class DpRound(PlanField):
    """What client-level DP sets in each round's plan.

    Attributes:
        clip_norm: ``C``, the L2 bound every client clips its update to this round.
        expected_cohort_size: ``m = q N`` (Poisson) or ``k`` (fixed size), public.
    """

    clip_norm: float
    expected_cohort_size: float


def _clip_norm(plan: RoundPlan, default: float) -> float:
    """``C`` of this round: the plan's, else the stage's configured one."""
    dp = plan.get(DpRound)
    return float(dp.clip_norm) if dp is not None else float(default)


def _denominator(plan: RoundPlan, default: float | None) -> float | None:
    fixed = plan.get(FixedDenominator)
    return fixed.value if fixed is not None else default


def _secret(secret_seed: int | None) -> int:
    return int(secret_seed) if secret_seed is not None else secrets.randbits(63)


def _mixed_seed(secret_seed: int, plan_seed: int, who: str, purpose: str) -> int:
    return client_seed(plan_seed, f"{secret_seed}|{who}", purpose=purpose)


@dataclass(frozen=True)
class ClipStage:
    """Client stage: clip the whole update to L2 norm ``C`` (DP-FedAvg, McMahan et al. 2018).

    ``C`` is the plan's ``DpRound.clip_norm`` when the server sets it, else ``clip_norm``. Stateless (state is ``None``).

    Metrics: ``pre_clip_norm``, ``clipped`` (1.0 if scaled down), ``clip_norm``. The update
    also carries ``UNCLIPPED_METRIC`` for the server's adaptive-clipping count.
    """

    name: ClassVar[str] = "dp_clip"
    kind: ClassVar[str] = "clip"

    clip_norm: float = 1.0

    def init(self) -> None:
        return None

    def apply(
        self, state: None, value: ClientUpdate, plan: RoundPlan
    ) -> tuple[None, ClientUpdate, dict[str, Any]]:
        if value.tensors is None:
            raise PipelineError(f"{self.name} needs update.tensors; put it before any encode stage")
        c = _clip_norm(plan, self.clip_norm)
        clipped, norm = clip_update(value.tensors, c)
        unclipped = 1.0 if norm <= c else 0.0
        out = replace(
            value, tensors=clipped, metrics={**value.metrics, UNCLIPPED_METRIC: unclipped}
        )
        return state, out, {"pre_clip_norm": norm, "clipped": 1.0 - unclipped, "clip_norm": c}


@dataclass(frozen=True)
class DistributedNoiseStage:
    """Client stage: add this client's share ``N(0, (z S)^2 / (k f))`` of the DP noise.

    ``k = len(plan.cohort)``, ``S = C`` (uniform weighting), ``f = min_honest_fraction``;
    see :mod:`fedlm.privacy.noise` for the trust assumption. Must run after ``ClipStage``
    and before secure-aggregation masking.

    State: ``{"secret_seed": int}``, mixed with ``plan.seed`` and the client id (SHA-256).
    """

    name: ClassVar[str] = "dp_noise_share"
    kind: ClassVar[str] = "noise"

    noise_multiplier: float
    clip_norm: float = 1.0
    min_honest_fraction: float = 1.0
    secret_seed: int | None = None
    encoding_margin: float = 0.0  # norm growth after the clip (SecAgg+ rounding): S = C + margin

    def init(self) -> dict[str, int]:
        return {"secret_seed": _secret(self.secret_seed)}

    def apply(
        self, state: dict[str, int], value: ClientUpdate, plan: RoundPlan
    ) -> tuple[dict[str, int], ClientUpdate, dict[str, Any]]:
        if value.tensors is None:
            raise PipelineError(f"{self.name} needs update.tensors; put it before any encode stage")
        if value.client_id not in plan.cohort:
            raise PipelineError(
                f"client {value.client_id!r} is not in the round's cohort; cannot size its noise share"
            )
        c = _clip_norm(plan, self.clip_norm)
        std = distributed_noise_std(
            self.noise_multiplier,
            sensitivity(c + self.encoding_margin),
            len(plan.cohort),
            min_honest_fraction=self.min_honest_fraction,
        )
        seed = _mixed_seed(state["secret_seed"], plan.seed, value.client_id, "dp-noise-share")
        noised = add_gaussian_noise(value.tensors, std, generator=make_generator(seed))
        return state, replace(value, tensors=noised), {"noise_std": std}


@dataclass(frozen=True)
class DpMeanStage:
    """Server stage: the bounded-sensitivity weighted sum over a public denominator.

    McMahan et al. (2018), Alg. 1, estimator ``f_f``: ``sum_i w_i delta_i / D`` with
    ``w_i = 1`` (uniform) or ``min(n_i, w_max)`` (capped) and ``D`` the public
    :class:`FixedDenominator` of the plan (expected cohort size or expected total weight),
    never the realised one. With ``reclip`` (central mode) each decoded update is clipped
    to ``C`` again first: a lossy codec or error feedback between the client's clip and
    here may have grown its norm, and the sensitivity ``S`` must hold for what is actually
    summed (the server is trusted with individual updates in central mode anyway). In
    distributed mode updates carry their noise share, which re-clipping would shrink, so
    ``reclip=False`` there. Stateless.
    """

    name: ClassVar[str] = "dp_mean"
    kind: ClassVar[str] = "aggregate"

    clip_norm: float = 1.0
    weighting: str = "uniform"
    max_weight: float | None = None
    reclip: bool = True

    def init(self) -> None:
        return None

    def apply(
        self, state: None, value: CohortValue, plan: RoundPlan
    ) -> tuple[None, CohortValue, dict[str, Any]]:
        d = _denominator(plan, None)
        if d is None or not float(d) > 0:
            raise PipelineError(
                f"{self.name} needs the plan's FixedDenominator > 0 (got {d!r}); the server "
                "sets it to the expected cohort size or expected total weight"
            )
        c = _clip_norm(plan, self.clip_norm)
        updates = [u for u in value.updates if u.tensors is not None]
        if self.weighting == "capped":
            weights = capped_weights([u.num_examples for u in updates], float(self.max_weight or 0))
        else:
            weights = [1.0] * len(updates)
        total: dict[str, torch.Tensor] = {}
        reclipped = 0
        for u, w in zip(updates, weights, strict=True):
            tensors = u.tensors
            if self.reclip:
                tensors, norm = clip_update(tensors, c)  # type: ignore[arg-type]
                reclipped += int(norm > c)
            for k, t in tensors.items():
                acc = total.setdefault(k, torch.zeros_like(t, dtype=torch.float64))
                acc.add_(t.to(torch.float64), alpha=w)
        value.aggregate = {k: (v / float(d)).to(torch.float32) for k, v in total.items()}
        metrics = {
            "clients": len(updates),
            "total_weight": float(sum(weights)),
            "denominator": float(d),
            "reclipped": reclipped,
        }
        return state, value, metrics


@dataclass(frozen=True)
class CentralNoiseStage:
    """Server stage: the Gaussian mechanism of DP-FedAvg on the aggregate.

    The aggregate stage has already computed ``sum_i w_i delta_i / D``. Adding
    ``N(0, (z S)^2)`` to the sum and then dividing by ``D`` is the same distribution as
    adding ``N(0, (z S / D)^2)`` after the division, which is what this stage does: the noise
    std applied to ``value.aggregate`` is ``z S / D``. ``S = C`` (uniform) or ``C * w_max``
    (capped); ``D`` is the plan's ``FixedDenominator`` or ``denominator``.

    With adaptive clipping (``clipped_count_stddev`` set) the update noise uses
    ``z_delta = split_noise_multiplier(z, sigma_b)`` (Andrew et al. 2021) so that the sum and
    the count together are accounted as one Gaussian with multiplier ``z``.

    State: ``{"secret_seed": int}``.
    """

    name: ClassVar[str] = "dp_noise"
    kind: ClassVar[str] = "noise"

    noise_multiplier: float
    clip_norm: float = 1.0
    weighting: str = "uniform"
    max_weight: float | None = None
    denominator: float | None = None
    clipped_count_stddev: float | None = None
    secret_seed: int | None = None
    encoding_margin: float = 0.0  # norm growth after the clip (codec, SecAgg+): S uses C + margin

    def init(self) -> dict[str, int]:
        return {"secret_seed": _secret(self.secret_seed)}

    def apply(
        self, state: dict[str, int], value: CohortValue, plan: RoundPlan
    ) -> tuple[dict[str, int], CohortValue, dict[str, Any]]:
        if value.aggregate is None:
            raise PipelineError(
                f"{self.name} needs value.aggregate; put it after the aggregate stage"
            )
        c = _clip_norm(plan, self.clip_norm)
        d = _denominator(plan, self.denominator)
        if d is None or not float(d) > 0:
            raise PipelineError(
                f"{self.name} needs the public denominator D > 0 (got {d!r}); set the plan's "
                "FixedDenominator or CentralNoiseStage(denominator=...) to the "
                "expected cohort size (uniform) or expected total weight (capped)"
            )
        z = self.noise_multiplier
        if self.clipped_count_stddev is not None:
            z = split_noise_multiplier(z, self.clipped_count_stddev)
        sens = sensitivity(c + self.encoding_margin, weighting=self.weighting, max_weight=self.max_weight)
        std = central_noise_std(z, sens) / float(d)  # noise after division by D
        seed = _mixed_seed(state["secret_seed"], plan.seed, "server", "dp-central-noise")
        noised = add_gaussian_noise(value.aggregate, std, generator=make_generator(seed))
        metrics = {"noise_std": std, "noise_multiplier": z, "clip_norm": c, "denominator": float(d)}
        return state, replace(value, aggregate=noised), metrics


@dataclass(frozen=True)
class AdaptiveClipStage:
    """Server stage: move ``C`` towards the ``target_quantile`` of update norms.

    Andrew et al. (2021), Alg. 1: ``b = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2``
    from the ``UNCLIPPED_METRIC`` bits of the round's updates, then
    ``C <- C exp(-eta_C (b - gamma))``. The aggregate is not touched. The server reads the
    next ``C`` with :meth:`clip_norm` and sends it in the plan's ``DpRound``.

    State: ``{"clip_norm": float, "secret_seed": int}``.
    """

    name: ClassVar[str] = "dp_adaptive_clip"
    kind: ClassVar[str] = "noise"

    initial_clip_norm: float
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clipped_count_stddev: float = 0.0
    expected_cohort_size: float | None = None
    secret_seed: int | None = None

    def init(self) -> dict[str, Any]:
        return {
            "clip_norm": float(self.initial_clip_norm),
            "secret_seed": _secret(self.secret_seed),
        }

    @staticmethod
    def clip_norm(state: dict[str, Any]) -> float:
        """The ``C`` clients should clip to in the next round."""
        return float(state["clip_norm"])

    def apply(
        self, state: dict[str, Any], value: CohortValue, plan: RoundPlan
    ) -> tuple[dict[str, Any], CohortValue, dict[str, Any]]:
        c = float(state["clip_norm"])
        dp = plan.get(DpRound)
        used = dp.clip_norm if dp is not None else None
        if used is None or abs(float(used) - c) > 1e-12 * max(1.0, c):
            raise PipelineError(
                f"{self.name}: clients clipped to the plan's DpRound.clip_norm={used!r} but the "
                f"adaptive state holds C={c!r}; set DpRound.clip_norm from "
                "AdaptiveClipStage.clip_norm(state) when planning each round"
            )
        m = dp.expected_cohort_size if dp is not None else self.expected_cohort_size
        # A client's bit is its own claim: a missing, non-numeric or out-of-range one counts
        # as "clipped" (0) or is clamped to [0, 1], so the count's sensitivity stays 1 and a
        # hostile client cannot stop the round; the count is only a hint for the next C.
        bits, bad = [], 0
        for u in value.updates:
            bit = _unit_bit(u.metrics.get(UNCLIPPED_METRIC))
            bad += bit is None
            bits.append(0.0 if bit is None else bit)
        seed = _mixed_seed(state["secret_seed"], plan.seed, "server", "dp-adaptive-clip")
        b = noisy_unclipped_fraction(
            bits, float(m), stddev=self.clipped_count_stddev, generator=make_generator(seed)
        )
        new_c = adaptive_clip_update(
            c, b, target_quantile=self.target_quantile, clip_lr=self.clip_lr
        )
        metrics = {"clip_norm": c, "next_clip_norm": new_c, "unclipped_fraction": b, "invalid_bits": bad}
        return {**state, "clip_norm": new_c}, value, metrics


def _unit_bit(raw: Any) -> float | None:
    """A client's unclipped bit clamped to [0, 1]; None when it is missing or not a finite number."""
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real) or not math.isfinite(raw):  # numpy scalars too
        return None
    return min(1.0, max(0.0, float(raw)))


def dp_fedavg_stages(
    config: PrivacyConfig,
    noise_multiplier: float,
    *,
    expected_cohort_size: float,
    secret_seed: int | None = None,
    encoding_margin: float = 0.0,
) -> tuple[list[Any], list[Any]]:
    """Named constructor: the client and server DP stages for a ``PrivacyConfig``.

    Args:
        config: an enabled privacy config.
        noise_multiplier: the total ``z`` (``config.noise_multiplier``, or the value
            ``calibrate_noise_multiplier`` returned for ``config.target_epsilon``).
        expected_cohort_size: ``m``, clients expected per round (``q * N`` or ``k``); the
            uniform denominator and the adaptive-clipping count's ``m``.
        secret_seed: fixed noise secret for reproducible simulations only.
        encoding_margin: how much a clipped update's norm can grow before it is summed
            (:func:`~fedlm.privacy.noise.encoding_margin`); the noise covers ``C + margin``.

    Returns:
        ``(client_stages, server_stages)`` in execution order. With capped weighting the
        server stage takes ``D`` from the plan's ``FixedDenominator`` (the expected total
        weight, which only the engine knows).
    """
    if not config.enabled:
        raise PipelineError("privacy.enabled is false; build no DP stages")
    if config.mode in ("ddgauss", "skellam"):
        raise PipelineError(
            f"privacy.mode={config.mode!r} runs the discrete mechanisms' stages "
            "(fedlm.privacy.distributed.stages), not DP-FedAvg's Gaussian ones"
        )
    if config.mode == "distributed":
        client = [
            ClipStage(clip_norm=config.clip_norm),
            DistributedNoiseStage(
                noise_multiplier=noise_multiplier,
                clip_norm=config.clip_norm,
                min_honest_fraction=config.min_honest_fraction,
                secret_seed=secret_seed,
                encoding_margin=encoding_margin,
            ),
        ]
        return client, []
    sigma_b = config.clipped_count_stddev if config.adaptive_clipping else None
    server: list[Any] = [
        CentralNoiseStage(
            noise_multiplier=noise_multiplier,
            clip_norm=config.clip_norm,
            weighting=config.weighting,
            max_weight=config.max_weight,
            denominator=float(expected_cohort_size) if config.weighting == "uniform" else None,
            clipped_count_stddev=sigma_b,
            secret_seed=secret_seed,
            encoding_margin=encoding_margin,
        )
    ]
    if config.adaptive_clipping and sigma_b is not None:
        server.append(
            AdaptiveClipStage(
                initial_clip_norm=config.clip_norm,
                target_quantile=config.target_quantile,
                clip_lr=config.clip_lr,
                clipped_count_stddev=sigma_b,
                expected_cohort_size=float(expected_cohort_size),
                secret_seed=None if secret_seed is None else secret_seed + 1,
            )
        )
    return [ClipStage(clip_norm=config.clip_norm)], server
