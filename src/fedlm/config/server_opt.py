"""Config of the server optimizer: the step the server takes with the aggregated delta.

No torch here (the config package must load without it). ``SERVER_OPTIMIZERS`` below is
the single source of optimizer names: each entry is the import path of its class in
``fedlm.aggregation.server_opt`` (loaded when a run builds one) and the hyperparameters it
reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.registry import Registry

# The server optimizers and the hyperparameters each reads; any other one set is an error,
# so a config never carries a value that silently does nothing.
_OPT = "fedlm.aggregation.server_opt"
SERVER_OPTIMIZERS: Registry = Registry("server optimizer")
SERVER_OPTIMIZERS.register("fedavg", f"{_OPT}:FedAvg", info=frozenset({"lr"}))
SERVER_OPTIMIZERS.register("fedavgm", f"{_OPT}:FedAvgM", info=frozenset({"lr", "momentum"}))
SERVER_OPTIMIZERS.register("fedadagrad", f"{_OPT}:FedAdagrad", info=frozenset({"lr", "beta1", "tau"}))
SERVER_OPTIMIZERS.register("fedadam", f"{_OPT}:FedAdam", info=frozenset({"lr", "beta1", "beta2", "tau"}))
SERVER_OPTIMIZERS.register("fedyogi", f"{_OPT}:FedYogi", info=frozenset({"lr", "beta1", "beta2", "tau"}))
SERVER_OPTIMIZERS.register("nesterov", f"{_OPT}:OuterNesterov", info=frozenset({"lr", "momentum"}))
SERVER_OPT_FIELDS: dict[str, frozenset[str]] = {n: SERVER_OPTIMIZERS.info(n) for n in SERVER_OPTIMIZERS.in_order()}

_OPTIONAL = ("lr", "momentum", "beta1", "beta2", "tau")


class ServerOptConfig(BaseModel):
    """Server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization"; DiLoCo).

    Hyperparameters left unset (None) take the optimizer's own default, documented on
    its class in ``fedlm.aggregation.server_opt`` (e.g. outer Nesterov: lr 0.7,
    momentum 0.9, after Douillard et al. 2023).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        default="fedavg",
        description=f"server optimizer, one of {sorted(SERVER_OPT_FIELDS)}",
    )
    lr: float | None = Field(
        default=None,
        description="server learning rate eta; the step is eta times the (adapted) mean delta",
    )
    momentum: float | None = Field(
        default=None,
        description="momentum in [0, 1) for fedavgm and nesterov",
    )
    beta1: float | None = Field(
        default=None,
        description="first-moment decay in [0, 1) for fedadagrad, fedadam, fedyogi",
    )
    beta2: float | None = Field(
        default=None,
        description="second-moment decay in [0, 1) for fedadam and fedyogi",
    )
    tau: float | None = Field(
        default=None,
        description="adaptivity tau > 0 for fedadagrad, fedadam, fedyogi (v starts at tau**2)",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        if value not in SERVER_OPT_FIELDS:
            raise ValueError(
                f"server_opt.name={value!r} is unknown; choose one of {sorted(SERVER_OPT_FIELDS)}"
            )
        return value

    @field_validator("lr", "tau")
    @classmethod
    def _positive(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"server_opt.{info.field_name}={value} must be > 0")
        return value

    @field_validator("momentum", "beta1", "beta2")
    @classmethod
    def _unit_interval(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"server_opt.{info.field_name}={value} must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _only_fields_the_optimizer_reads(self) -> ServerOptConfig:
        used = SERVER_OPT_FIELDS[self.name]
        unused = [f for f in _OPTIONAL if getattr(self, f) is not None and f not in used]
        if unused:
            raise ValueError(
                f"server_opt.name={self.name!r} does not read {unused}; remove them "
                f"(it reads {sorted(used)})"
            )
        return self

    def hyperparameters(self) -> dict[str, float]:
        """The hyperparameters that were set, as keyword arguments for the optimizer."""
        return {f: getattr(self, f) for f in _OPTIONAL if getattr(self, f) is not None}
