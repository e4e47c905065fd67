"""Server optimizers: the step the server applies with the round's aggregated delta.

The server holds the global trainable tensors ``x`` and receives the aggregated delta
``Δ = mean_i(local_i - global)``; ``-Δ`` is the round's pseudo-gradient. Each optimizer
turns Δ into the step the caller adds to ``x``::

    FedAvg      step = η Δ
    FedAvgM     m = β m + Δ;                                  step = η m
    FedAdagrad  m = β1 m + (1-β1) Δ;  v = v + Δ²;              step = η m / (√v + τ)
    FedAdam     m = β1 m + (1-β1) Δ;  v = β2 v + (1-β2) Δ²;    step = η m / (√v + τ)
    FedYogi     m = β1 m + (1-β1) Δ;  v = v - (1-β2) Δ² sign(v - Δ²);  step = η m / (√v + τ)
    Nesterov    g = -Δ;  m = μ m + g;                          step = -η (g + μ m)

The three adaptive rules are Algorithm 2 of Reddi et al. 2021, "Adaptive Federated
Optimization" (no bias correction, as in the paper). The paper asks for ``v_{-1} ≥ τ²``;
we start v at exactly τ² so the first steps are bounded by η/τ-scale rather than
dividing by ~τ. Outer Nesterov is DiLoCo's outer optimizer (Douillard et al. 2023),
identical to ``torch.optim.SGD(lr=η, momentum=μ, nesterov=True)`` fed with ``-Δ``.

Math lives in pure functions on tensor dicts; the stages are thin wrappers whose state
(``{"steps", "m", "v"}``) is returned explicitly, so ``torch.save`` of it is a checkpoint.
Moments are kept in float32 whatever the delta's dtype; the step is cast back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedlm.config.server_opt import SERVER_OPTIMIZERS, ServerOptConfig
from fedlm.errors import ConfigError, PipelineError, ProtocolError
from fedlm.stages import CohortValue, RoundPlan, TensorDict

ADAPTIVE_VARIANTS: tuple[str, ...] = ("adagrad", "adam", "yogi")


# ---------------------------------------------------------------- pure functions


def _check_keys(
    moments: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], what: str
) -> None:
    """Moments and delta must cover the same tensors with the same shapes (once moments exist)."""
    if not moments:
        return
    if set(moments) != set(delta):
        missing = sorted(set(moments) - set(delta))[:3]
        extra = sorted(set(delta) - set(moments))[:3]
        raise ProtocolError(
            f"server optimizer {what} holds other tensors than the delta "
            f"(missing from delta: {missing}, new in delta: {extra}); the trainable "
            "tensors must not change between rounds — restart the optimizer state"
        )
    for name, tensor in delta.items():
        if tuple(moments[name].shape) != tuple(tensor.shape):
            raise ProtocolError(
                f"delta {name!r} has shape {tuple(tensor.shape)} but the optimizer {what} "
                f"has {tuple(moments[name].shape)}"
            )


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32)


def fedavg_step(delta: Mapping[str, torch.Tensor], *, lr: float = 1.0) -> TensorDict:
    """FedAvg with a server learning rate (Reddi et al. 2021, eq. 1): ``step = η Δ``."""
    return {k: (lr * _f32(d)).to(d.dtype) for k, d in delta.items()}


def fedavgm_step(
    m: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], *, lr: float, momentum: float
) -> tuple[TensorDict, TensorDict]:
    """FedAvgM (Hsu et al. 2019): ``m = β m + Δ; step = η m``. Empty ``m`` means zeros.

    Returns:
        (new m, step).
    """
    _check_keys(m, delta, "momentum")
    new_m: TensorDict = {}
    step: TensorDict = {}
    for k, d in delta.items():
        prev = m[k] if m else torch.zeros_like(d, dtype=torch.float32)
        new_m[k] = momentum * prev + _f32(d)
        step[k] = (lr * new_m[k]).to(d.dtype)
    return new_m, step


def adaptive_step(
    m: Mapping[str, torch.Tensor],
    v: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    *,
    variant: str,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[TensorDict, TensorDict, TensorDict]:
    """FedAdagrad / FedAdam / FedYogi, Algorithm 2 of Reddi et al. 2021.

    Args:
        m: first moments by name; empty means zeros (first round).
        v: second moments by name; empty means τ² everywhere (first round).
        delta: aggregated delta Δ by name.
        variant: "adagrad", "adam" or "yogi" (how v is updated; β2 unused by adagrad).
        lr: server learning rate η.
        beta1: first-moment decay β1.
        beta2: second-moment decay β2.
        tau: adaptivity τ; also the initial √v.

    Returns:
        (new m, new v, step) with ``step = η m / (√v + τ)``.
    """
    if variant not in ADAPTIVE_VARIANTS:
        raise ConfigError(
            f"adaptive variant {variant!r} is unknown; choose one of {ADAPTIVE_VARIANTS}"
        )
    _check_keys(m, delta, "first moment")
    _check_keys(v, delta, "second moment")
    new_m: TensorDict = {}
    new_v: TensorDict = {}
    step: TensorDict = {}
    for k, d in delta.items():
        d32 = _f32(d)
        sq = d32 * d32
        prev_m = m[k] if m else torch.zeros_like(d32)
        prev_v = v[k] if v else torch.full_like(d32, tau * tau)
        new_m[k] = beta1 * prev_m + (1.0 - beta1) * d32
        if variant == "adagrad":
            new_v[k] = prev_v + sq
        elif variant == "adam":
            new_v[k] = beta2 * prev_v + (1.0 - beta2) * sq
        else:
            # Yogi moves v towards Δ² additively, by at most (1-β2)Δ² per round.
            new_v[k] = prev_v - (1.0 - beta2) * sq * torch.sign(prev_v - sq)
        step[k] = (lr * new_m[k] / (new_v[k].sqrt() + tau)).to(d.dtype)
    return new_m, new_v, step


def nesterov_step(
    m: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], *, lr: float, momentum: float
) -> tuple[TensorDict, TensorDict]:
    """Outer Nesterov momentum (DiLoCo, Douillard et al. 2023).

    With pseudo-gradient ``g = -Δ``: ``m = μ m + g; step = -η (g + μ m)``, the update of
    ``torch.optim.SGD(lr=η, momentum=μ, nesterov=True)`` (whose first buffer ``g``
    equals ``μ·0 + g``). Empty ``m`` means zeros.

    Returns:
        (new m, step).
    """
    _check_keys(m, delta, "momentum")
    new_m: TensorDict = {}
    step: TensorDict = {}
    for k, d in delta.items():
        g = -_f32(d)
        prev = m[k] if m else torch.zeros_like(g)
        new_m[k] = momentum * prev + g
        step[k] = (-lr * (g + momentum * new_m[k])).to(d.dtype)
    return new_m, step


# ---------------------------------------------------------------- stages


def _require_aggregate(value: CohortValue, name: str) -> TensorDict:
    if not isinstance(value, CohortValue) or value.aggregate is None:
        raise PipelineError(
            f"server stage {name!r} (optimize) got no aggregate; put an aggregate stage before it"
        )
    return value.aggregate


def _metrics(
    step: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    step_sq = sum(float(_f32(s).pow(2).sum()) for s in step.values())
    delta_sq = sum(float(_f32(d).pow(2).sum()) for d in delta.values())
    return {"delta_norm": delta_sq**0.5, "step_norm": step_sq**0.5}


def _check_positive(owner: str, **values: float) -> None:
    for field, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}.{field}={value} must be > 0")


def _check_unit(owner: str, **values: float) -> None:
    for field, value in values.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{owner}.{field}={value} must be in [0, 1)")


class ServerOptimizer:
    """Base of the server optimizer stages: state shape, the CohortValue contract, metrics.

    Subclasses are frozen dataclasses of hyperparameters and implement ``_step``.
    """

    name: ClassVar[str] = "server_opt"
    kind: ClassVar[str] = "optimize"

    def init(self) -> dict[str, Any]:
        """State: rounds stepped, first moments ``m`` and second moments ``v`` (empty = fresh)."""
        return {"steps": 0, "m": {}, "v": {}}

    def _step(self, state: dict[str, Any], delta: TensorDict) -> tuple[dict[str, Any], TensorDict]:
        raise NotImplementedError

    def apply(
        self, state: dict[str, Any], value: CohortValue, plan: RoundPlan
    ) -> tuple[dict[str, Any], CohortValue, dict[str, Any]]:
        """Replace ``value.aggregate`` (Δ) by the step to add to the global tensors."""
        delta = _require_aggregate(value, self.name)
        new_state, step = self._step(state, delta)
        new_state["steps"] = int(state.get("steps", 0)) + 1
        return new_state, dataclasses.replace(value, aggregate=step), _metrics(step, delta)


@dataclass(frozen=True)
class FedAvg(ServerOptimizer):
    """FedAvg with server learning rate η (Reddi et al. 2021): ``step = η Δ``.

    Args:
        lr: server learning rate η; 1.0 is plain FedAvg (McMahan et al. 2017).
    """

    lr: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("fedavg", lr=self.lr)

    def _step(self, state: dict[str, Any], delta: TensorDict) -> tuple[dict[str, Any], TensorDict]:
        return {"m": {}, "v": {}}, fedavg_step(delta, lr=self.lr)


@dataclass(frozen=True)
class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum (Hsu et al. 2019): ``m = β m + Δ; step = η m``.

    Args:
        lr: server learning rate η.
        momentum: β; 0.9 is the common choice.
    """

    lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_positive("fedavgm", lr=self.lr)
        _check_unit("fedavgm", momentum=self.momentum)

    def _step(self, state: dict[str, Any], delta: TensorDict) -> tuple[dict[str, Any], TensorDict]:
        m, step = fedavgm_step(state["m"], delta, lr=self.lr, momentum=self.momentum)
        return {"m": m, "v": {}}, step


@dataclass(frozen=True)
class _Adaptive(ServerOptimizer):
    """Shared fields of the Algorithm 2 optimizers; defaults follow Reddi et al. 2021."""

    variant: ClassVar[str] = "adam"
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive(f"fed{self.variant}", lr=self.lr, tau=self.tau)
        _check_unit(f"fed{self.variant}", beta1=self.beta1, beta2=self.beta2)

    def _step(self, state: dict[str, Any], delta: TensorDict) -> tuple[dict[str, Any], TensorDict]:
        m, v, step = adaptive_step(
            state["m"],
            state["v"],
            delta,
            variant=self.variant,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return {"m": m, "v": v}, step


@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    """FedAdagrad (Reddi et al. 2021, Alg. 2): ``v += Δ²``; ``beta2`` is unused."""

    variant: ClassVar[str] = "adagrad"


@dataclass(frozen=True)
class FedAdam(_Adaptive):
    """FedAdam (Reddi et al. 2021, Alg. 2): ``v = β2 v + (1-β2) Δ²``."""

    variant: ClassVar[str] = "adam"


@dataclass(frozen=True)
class FedYogi(_Adaptive):
    """FedYogi (Reddi et al. 2021, Alg. 2): ``v = v - (1-β2) Δ² sign(v - Δ²)``."""

    variant: ClassVar[str] = "yogi"


@dataclass(frozen=True)
class OuterNesterov(ServerOptimizer):
    """DiLoCo's outer optimizer (Douillard et al. 2023): SGD with Nesterov momentum on -Δ.

    Args:
        lr: outer learning rate η; DiLoCo uses 0.7.
        momentum: μ; DiLoCo uses 0.9.
    """

    lr: float = 0.7
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_positive("nesterov", lr=self.lr)
        _check_unit("nesterov", momentum=self.momentum)

    def _step(self, state: dict[str, Any], delta: TensorDict) -> tuple[dict[str, Any], TensorDict]:
        m, step = nesterov_step(state["m"], delta, lr=self.lr, momentum=self.momentum)
        return {"m": m, "v": {}}, step


def server_optimizer_from_config(config: ServerOptConfig) -> ServerOptimizer:
    """Build the configured optimizer; unset hyperparameters keep the class defaults."""
    return SERVER_OPTIMIZERS.create(config.name, **config.hyperparameters())
