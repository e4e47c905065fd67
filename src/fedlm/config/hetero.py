"""Config of heterogeneity: local objectives, LoRA-aware aggregation, client resources.

Three sections, each a frozen pydantic model (no torch here):

- ``local``: the client's optimiser and objective (FedAvg, FedProx's proximal term,
  SCAFFOLD's control variates);
- ``aggregation``: how the server combines updates (``lora``: naive, exact or ffa;
  ``normalize``: FedNova);
- ``resources``: per-client resource profiles (LoRA rank, local steps, batch size,
  speed) by an explicit list or drawn from a distribution, and a round time budget
  that turns slow clients into stragglers.

:func:`check_hetero` rejects combinations that cannot work, naming the fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalConfig(_Section):
    """Local training of each client (the inner loop)."""

    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="Local optimiser: adamw, or plain sgd (the setting of FedAvg, FedProx and SCAFFOLD papers).",
    )
    algorithm: Literal["fedavg", "fedprox", "scaffold"] = Field(
        "fedavg",
        description="fedavg: plain local steps; fedprox: + mu/2 ||w - w_global||^2 (Li et al. 2020); "
        "scaffold: control-variate corrected steps (Karimireddy et al. 2020, option II).",
    )
    prox_mu: float | None = Field(
        None, description="FedProx proximal weight mu > 0 (only with algorithm=fedprox; e.g. 0.01).", gt=0
    )

    @model_validator(mode="after")
    def _mu_only_for_prox(self) -> LocalConfig:
        if self.algorithm == "fedprox" and self.prox_mu is None:
            raise ValueError("local.algorithm='fedprox' needs local.prox_mu (e.g. local.prox_mu=0.01)")
        if self.algorithm != "fedprox" and self.prox_mu is not None:
            raise ValueError(
                f"local.prox_mu={self.prox_mu} is only read by local.algorithm='fedprox', not {self.algorithm!r}; remove it"
            )
        return self


class AggregationConfig(_Section):
    """How the server combines LoRA updates."""

    lora: Literal["naive", "exact", "ffa"] = Field(
        "naive",
        description="naive: average A and B separately; exact: the applied update equals mean(B A); "
        "ffa: A frozen on every client, only B trained and averaged (FFA-LoRA).",
    )
    exact_method: Literal["fedex", "svd"] = Field(
        "fedex",
        description="How lora=exact is exact: fedex folds the residual mean(BA) - mean(B)mean(A) into the frozen "
        "base weights (FedEx-LoRA; costs out*in floats per module down); svd stacks the client adapters (FLoRA) "
        "and re-projects to rank lora.r (FlexLoRA; exact only when the stacked rank fits).",
    )
    normalize: Literal["none", "fednova"] = Field(
        "none",
        description="fednova: normalise each delta by its local steps before averaging (Wang et al. 2020).",
    )
    log_error: bool = Field(
        True, description="Log the per-layer aggregation error ||mean(BA) - applied dW||_F / ||mean(BA)||_F each round."
    )


class ClientProfile(_Section):
    """One resource profile; unset fields keep the federation's values."""

    rank: int | None = Field(None, description="LoRA rank this client trains (<= lora.r).", ge=1)
    local_steps: int | None = Field(None, description="Local steps per round.", ge=1)
    batch_size: int | None = Field(None, description="Sequences per local step.", ge=1)
    speed: float = Field(1.0, description="Local steps per simulated second (for resources.time_budget).", gt=0)


class ResourcesConfig(_Section):
    """Per-client resource profiles and straggler simulation."""

    profiles: list[ClientProfile] = Field(
        default_factory=list, description="Resource profiles; empty means every client uses the federation settings."
    )
    assign: Literal["cycle", "sample"] = Field(
        "cycle",
        description="cycle: the i-th client (sorted ids) gets profiles[i % len]; sample: each client draws a "
        "profile with probabilities resources.weights (seeded by resources.seed).",
    )
    weights: list[float] | None = Field(None, description="Draw probabilities of the profiles (assign=sample).")
    time_budget: float | None = Field(
        None, description="Simulated seconds a round waits; a client needing steps/speed longer is a straggler.", gt=0
    )
    straggler: Literal["drop", "partial"] = Field(
        "drop", description="drop: a straggler sends nothing; partial: it sends after the steps that fit the budget."
    )
    seed: int = Field(0, description="Seed of the profile draw (assign=sample).")

    @model_validator(mode="after")
    def _weights(self) -> ResourcesConfig:
        if self.weights is not None:
            if self.assign != "sample":
                raise ValueError("resources.weights is only read with resources.assign='sample'; remove it")
            if len(self.weights) != len(self.profiles):
                raise ValueError(
                    f"resources.weights has {len(self.weights)} entries for {len(self.profiles)} profiles; give one each"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"resources.weights={self.weights} must be >= 0 with a positive sum")
        if self.assign == "sample" and not self.profiles:
            raise ValueError("resources.assign='sample' needs resources.profiles to draw from")
        return self

    def ranks(self) -> set[int]:
        return {p.rank for p in self.profiles if p.rank is not None}


def check_hetero(config: Any) -> None:
    """Cross-section checks of the three sections against the rest of an experiment.

    Raises:
        ValueError: a combination that cannot work, naming the fields and the fix.
    """
    local, agg, res = config.local, config.aggregation, config.resources
    lora_on = config.lora.enabled
    dp_or_robust = config.privacy.enabled or config.robust.aggregator != "fedavg"
    secagg = config.secure_aggregation.enabled
    if agg.lora != "naive" and not lora_on:
        raise ValueError(f"aggregation.lora={agg.lora!r} needs lora.enabled=true")
    if agg.lora == "exact" and (dp_or_robust or secagg or agg.normalize != "none"):
        raise ValueError(
            "aggregation.lora='exact' is its own aggregate stage; it cannot combine with privacy.enabled, "
            "robust.aggregator, secure_aggregation or aggregation.normalize=fednova (use aggregation.lora=ffa, "
            "whose updates carry B alone and compose with all of them, or naive)"
        )
    if agg.lora == "exact" and agg.exact_method == "fedex":
        so = config.server_opt
        if so.name != "fedavg" or (so.lr is not None and so.lr != 1.0):
            raise ValueError(
                "aggregation.lora=exact with exact_method=fedex folds the residual into the base weights as is, "
                f"so it needs server_opt.name=fedavg with lr 1 (got {so.name!r}, lr={so.lr}); "
                "or use aggregation.exact_method=svd"
            )
    if agg.normalize == "fednova" and (dp_or_robust or secagg):
        raise ValueError("aggregation.normalize=fednova replaces the mean; it cannot combine with DP, robust or secure aggregation")
    if local.algorithm == "scaffold" and secagg:
        raise ValueError("local.algorithm=scaffold needs each client's delta; it cannot run under secure_aggregation")
    fed = config.federation
    varies = fed.lr_schedule != "constant" or fed.warmup
    if local.algorithm == "scaffold" and fed.lr_schedule_unit == "step" and varies:
        raise ValueError(
            "local.algorithm=scaffold divides each client's change by steps x lr, one lr per round, but "
            "federation.lr_schedule_unit=step changes the lr within a round; use federation.lr_schedule_unit=round"
        )
    ranks = res.ranks()
    if ranks:
        if not lora_on:
            raise ValueError("resources.profiles set a LoRA rank but lora.enabled=false")
        too_big = sorted(r for r in ranks if r > config.lora.r)
        if too_big:
            raise ValueError(
                f"resources.profiles ranks {too_big} exceed lora.r={config.lora.r}, the global (target) rank; "
                "raise lora.r to the largest client rank"
            )
    mixed = any(r < config.lora.r for r in ranks)
    if mixed and (dp_or_robust or secagg or local.algorithm == "scaffold" or agg.normalize != "none"):
        raise ValueError(
            "clients with a rank below lora.r truncate the broadcast adapter, which only the LoRA aggregate stage "
            "understands; mixed ranks cannot combine with DP, robust or secure aggregation, scaffold or fednova"
        )
    if config.privacy.dp_sgd.enabled and (local.algorithm != "fedavg" or local.optimizer != "adamw" or agg.lora == "ffa" or mixed):
        raise ValueError(
            "privacy.dp_sgd runs its own local loop; use local.algorithm=fedavg, local.optimizer=adamw, "
            "aggregation.lora naive/exact and one rank with it"
        )


__all__ = ["AggregationConfig", "ClientProfile", "LocalConfig", "ResourcesConfig", "check_hetero"]
