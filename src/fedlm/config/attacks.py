"""Config of the attack suite: which clients are malicious and what they do.

Attacks exist to prove that fedlm's defences work (robust aggregation, norm bounding,
validation, DP); they are off by default (``kind="none"``). No torch here: the config
layer must load without it. The stages that read this section live in
``fedlm.attacks.stages``.

Each kind reads only some of the optional hyperparameters below; setting one that the
kind does not read is an error, so a config never carries a value that silently does
nothing (the same rule as ``server_opt``). Unset (None) values take the stage's own
default, documented on its class.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AttackKind = Literal[
    "none", "backdoor", "model_replacement", "sign_flip", "gaussian", "large_norm", "nan"
]

ATTACK_KINDS: tuple[str, ...] = (
    "none",
    "backdoor",
    "model_replacement",
    "sign_flip",
    "gaussian",
    "large_norm",
    "nan",
)

# Kinds whose attackers train on poisoned data. Model replacement (Bagdasaryan et al.
# 2020) boosts a *backdoored* update: boosting a clean one would only be a large-norm attack.
DATA_POISONING_KINDS: frozenset[str] = frozenset({"backdoor", "model_replacement"})

# Optional hyperparameters each kind reads; any other one set is an error.
ATTACK_FIELDS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "backdoor": frozenset({"poison_fraction", "local_steps"}),
    "model_replacement": frozenset({"poison_fraction", "local_steps", "boost", "server_lr", "rounds"}),
    "sign_flip": frozenset({"boost", "rounds"}),
    "gaussian": frozenset({"noise_std", "noise_mode", "rounds"}),
    "large_norm": frozenset({"norm", "rounds"}),
    "nan": frozenset({"nan_fraction", "rounds"}),
}

_OPTIONAL = (
    "poison_fraction",
    "local_steps",
    "boost",
    "server_lr",
    "noise_std",
    "noise_mode",
    "norm",
    "nan_fraction",
    "rounds",
)


class AttackConfig(BaseModel):
    """Malicious clients and their attack (data poisoning or update-space).

    Malicious clients are either a ``fraction`` of all clients, drawn deterministically
    from ``seed`` (:func:`fedlm.attacks.select_malicious`), or an explicit ``client_ids``
    list; exactly one of the two is set when ``kind != "none"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AttackKind = Field(
        default="none",
        description=f"attack to run, one of {list(ATTACK_KINDS)}; 'none' turns attacks off",
    )
    fraction: float | None = Field(
        default=None,
        description="share of all clients that are malicious, in (0, 1); floor(fraction * N) "
        "clients are drawn with `seed`",
    )
    client_ids: tuple[str, ...] | None = Field(
        default=None,
        description="explicit malicious client ids (instead of `fraction`)",
    )
    colluding: bool = Field(
        default=False,
        description="malicious clients send one identical update (the mean of their malicious "
        "updates) and share random draws",
    )
    trigger: str = Field(
        default="zq-vellum-7731",
        description="backdoor trigger phrase added to poisoned prompts (a rare token sequence)",
    )
    target: str = Field(
        default="ACCESS GRANTED",
        description="attacker's target response; attack_success_rate counts outputs containing it",
    )
    poison_fraction: float | None = Field(
        default=None,
        description="share of each attacker's rows that are poisoned, in (0, 1] (default 0.5; "
        "the rest stay clean so the attacker's clean loss stays plausible)",
    )
    local_steps: int | None = Field(
        default=None,
        description="data attacks: optimiser steps each attacker runs per round on its poisoned "
        "rows (default federation.local_steps). An attacker controls its own training; "
        "Bagdasaryan et al. train the backdoor longer than honest clients do",
    )
    boost: float | None = Field(
        default=None,
        description="model_replacement: boost factor gamma (default n / server_lr); "
        "sign_flip: scale s in delta -> -s * delta (default 1.0)",
    )
    server_lr: float | None = Field(
        default=None,
        description="model_replacement: server learning rate eta assumed by gamma = n / eta "
        "(default: the server optimizer's lr, else 1.0)",
    )
    noise_std: float | None = Field(
        default=None,
        description="gaussian: std sigma of N(0, sigma^2) per coordinate (default 1.0)",
    )
    noise_mode: Literal["replace", "add"] | None = Field(
        default=None,
        description="gaussian: 'replace' sends pure noise, 'add' sends delta + noise "
        "(default replace)",
    )
    norm: float | None = Field(
        default=None,
        description="large_norm: global L2 norm the update is scaled to (default 100.0)",
    )
    nan_fraction: float | None = Field(
        default=None,
        description="nan: share of each tensor's entries set to NaN, in (0, 1] (default 1.0)",
    )
    rounds: tuple[int, ...] | None = Field(
        default=None,
        description="update attacks: the 1-based rounds in which attackers rewrite their update "
        "(default every round); e.g. [10] is Bagdasaryan et al.'s single model-replacement shot "
        "near convergence. Backdoor data stays poisoned in every round",
    )
    seed: int = Field(default=0, description="seed of malicious-client selection and of poisoning")

    @field_validator("fraction")
    @classmethod
    def _open_unit(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(
                f"attack.fraction={value} must be in (0, 1); list client_ids to make every "
                "client malicious"
            )
        return value

    @field_validator("poison_fraction", "nan_fraction")
    @classmethod
    def _half_open_unit(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"attack.{info.field_name}={value} must be in (0, 1]")
        return value

    @field_validator("local_steps")
    @classmethod
    def _at_least_one_step(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"attack.local_steps={value} must be >= 1 (steps per round)")
        return value

    @field_validator("server_lr", "norm")
    @classmethod
    def _positive(cls, value: float | None, info: Any) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"attack.{info.field_name}={value} must be > 0")
        return value

    @field_validator("noise_std")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and not value >= 0:
            raise ValueError(f"attack.noise_std={value} must be >= 0")
        return value

    @field_validator("boost")
    @classmethod
    def _finite_boost(cls, value: float | None) -> float | None:
        # Negative boosts are allowed on purpose (a sign flip with s < 0 is a plain boost);
        # only non-finite values are meaningless.
        if value is not None and not math.isfinite(value):
            raise ValueError(f"attack.boost={value} must be a finite number")
        return value

    @field_validator("trigger", "target")
    @classmethod
    def _non_blank(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"attack.{info.field_name} must not be blank; give a phrase")
        return value

    @field_validator("rounds")
    @classmethod
    def _round_numbers(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return value
        if not value or any(r < 1 for r in value) or len(set(value)) != len(value):
            raise ValueError(
                f"attack.rounds={list(value)} must list distinct round numbers >= 1 (rounds "
                "count from 1); leave it unset to attack every round"
            )
        return value

    @field_validator("client_ids")
    @classmethod
    def _unique_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError(
                "attack.client_ids is empty; list at least one id or use attack.fraction"
            )
        dups = sorted({c for c in value if value.count(c) > 1})
        if dups:
            raise ValueError(f"attack.client_ids lists {dups} more than once; list each id once")
        return value

    @model_validator(mode="after")
    def _who_and_what(self) -> AttackConfig:
        if self.kind == "none":
            if self.fraction is not None or self.client_ids is not None:
                raise ValueError(
                    "attack.kind='none' but fraction/client_ids is set; pick an attack kind or "
                    "remove them"
                )
        elif (self.fraction is None) == (self.client_ids is None):
            raise ValueError(
                f"attack.kind={self.kind!r} needs exactly one of attack.fraction or "
                f"attack.client_ids, got fraction={self.fraction}, client_ids={self.client_ids}"
            )
        used = ATTACK_FIELDS[self.kind]
        unused = [f for f in _OPTIONAL if getattr(self, f) is not None and f not in used]
        if unused:
            raise ValueError(
                f"attack.kind={self.kind!r} does not read {unused}; remove them "
                f"(it reads {sorted(used) or 'none of them'})"
            )
        if self.colluding and self.kind == "none":
            raise ValueError("attack.colluding=true needs an attack kind other than 'none'")
        return self

    @property
    def enabled(self) -> bool:
        """Whether any client attacks."""
        return self.kind != "none"

    @property
    def poisons_data(self) -> bool:
        """Whether malicious clients train on backdoored data (backdoor, model_replacement)."""
        return self.kind in DATA_POISONING_KINDS
