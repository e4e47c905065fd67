"""Config of personalisation and fairness across clients (no torch here).

Two sections, each a frozen pydantic model:

- ``personal``: how each client gets a model of its own. ``modules`` keeps the LoRA
  tensors whose names match ``local_modules`` on the client (FedPer, Arivazhagan et al.
  2019; with ``head_steps``, FedRep's alternating schedule, Collins et al. 2021);
  ``ditto`` trains a personal adapter regularised toward the global one with weight
  ``lam`` (Li et al. 2021); ``finetune`` fine-tunes the
  final global adapter on each client's own data after federation. With ``val_fraction``
  each client chooses its personal model (or the global one) on examples held out of its
  personal training (:mod:`fedlm.personal.selection`). Personal state lives in the
  client's state and never reaches the server.
- ``fairness``: q-FFL aggregation (Li et al. 2020, "Fair Resource Allocation in
  Federated Learning"), which weights clients by their loss to the power ``q``.

:func:`check_personal` rejects combinations that cannot work, naming the fields.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.registry import Registry

# The personalisation methods, one class per file in fedlm.capabilities.personal, imported
# when a run builds one. Register a new method here; its name is then valid in configs.
PERSONAL_METHODS: Registry = Registry("personalisation method")
PERSONAL_METHODS.register("modules", "fedlm.capabilities.personal.modules:PersonalModules")
PERSONAL_METHODS.register("ditto", "fedlm.capabilities.personal.ditto:Ditto")
PERSONAL_METHODS.register("mix", "fedlm.capabilities.personal.mix:Mix")
PERSONAL_METHODS.register("finetune", "fedlm.capabilities.personal.finetune:Finetune")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PersonalConfig(_Section):
    """Each client's personal model."""

    method: str = Field(
        "none",
        description="none; modules: tensors matching local_modules stay on the client (FedPer/FedRep); "
        "ditto: personal adapter regularised toward the global one (Li et al. 2021); "
        "mix: a local adapter next to the global one, mixed with a weight per module learnt on the "
        "client's data (FedDPA style); finetune: local fine-tuning of the final global adapter.",
    )
    local_modules: list[str] = Field(
        default_factory=list,
        description="Substrings of trainable tensor names kept local with method=modules, "
        "e.g. ['layers.1.'] or ['v_proj'] (names as in the saved PEFT adapter).",
    )
    lam: float = Field(
        0.1, description="Ditto's lambda >= 0: weight of lambda/2 ||v - w_global||^2; inf pins v to the global adapter.",
        ge=0,
    )
    steps: int | None = Field(
        None, description="Personal steps per round (ditto) or after federation (finetune); default federation.local_steps.",
        ge=1,
    )
    lr: float | None = Field(None, description="Learning rate of personal steps; default federation.lr.", gt=0)
    head_steps: int | None = Field(
        None,
        description="method=modules: FedRep's schedule (Collins et al. 2021). Each round the client first trains "
        "its personal modules alone for this many steps (the shared ones frozen), then the shared ones for the "
        "round's local steps (its personal ones frozen). null trains both together (FedPer).",
        ge=1,
    )
    val_fraction: float = Field(
        0.0,
        description="Share of each client's training examples held out of its personal training to choose its "
        "personal model on (finetune: the step count, 0 = the global model; ditto, mix: personal or global). "
        "0 (default) keeps the personal model as trained.",
        ge=0,
        lt=1,
    )
    mix_lr: float = Field(
        0.1, description="method=mix: Adam learning rate of the mixing logits (one per module), each round.", gt=0
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v != "none" and v not in PERSONAL_METHODS:
            raise ValueError(f"personal.method={v!r} is unknown; choose one of {['none', *PERSONAL_METHODS.names()]}")
        return v

    @model_validator(mode="after")
    def _fields_match_method(self) -> PersonalConfig:
        if self.method == "modules" and not self.local_modules:
            raise ValueError(
                "personal.method='modules' needs personal.local_modules (name substrings kept local), "
                "e.g. personal.local_modules=[layers.1.]"
            )
        if self.method != "modules" and self.local_modules:
            raise ValueError(
                f"personal.local_modules={self.local_modules} is only read by personal.method='modules', "
                f"not {self.method!r}; remove it"
            )
        if self.method != "modules" and self.head_steps is not None:
            raise ValueError(
                f"personal.head_steps={self.head_steps} is FedRep's schedule for personal.method='modules', "
                f"not {self.method!r}; remove it or set personal.method=modules"
            )
        if self.val_fraction and self.method not in ("finetune", "ditto", "mix"):
            reason = ("no personal model to choose" if self.method == "none" else
                      "its personal modules train in the round's local steps on all the client's examples, so none "
                      "is held out of them")
            raise ValueError(
                f"personal.val_fraction={self.val_fraction} chooses between personal and global models with "
                f"personal.method finetune, ditto or mix; with {self.method!r} {reason}. "
                "Set personal.val_fraction=0"
            )
        return self


class FairnessConfig(_Section):
    """Fair aggregation across clients."""

    qffl_q: float | None = Field(
        None,
        description="q-FFL's q >= 0 (Li et al. 2020): clients with higher loss weigh more; q=0 is FedAvg; "
        "null (default) keeps the plain mean.",
        ge=0,
    )
    qffl_lipschitz: float | None = Field(
        None, description="q-FFL's Lipschitz estimate L; null uses 1 / (the round's client lr), as the paper does.", gt=0
    )
    loss_batches: int = Field(
        2, description="Training batches each client scores at the broadcast adapter for q-FFL's F_k.", ge=1
    )

    @model_validator(mode="after")
    def _finite(self) -> FairnessConfig:
        if self.qffl_q is not None and not math.isfinite(self.qffl_q):
            raise ValueError(f"fairness.qffl_q must be finite, got {self.qffl_q}; try 0.1 .. 5")
        return self


def check_personal(config: Any) -> None:
    """Cross-section checks of ``personal`` and ``fairness`` (``config`` is an ExperimentConfig).

    Raises:
        ValueError: a combination that cannot work, with the fields to change.
    """
    p, f = config.personal, config.fairness
    if p.method == "modules":
        if p.head_steps is not None and config.privacy.dp_sgd.enabled:
            raise ValueError(
                "personal.head_steps (FedRep) freezes tensors in turn, which DP-SGD's per-example clipping "
                "does not do; set personal.head_steps=null or privacy.dp_sgd.enabled=false"
            )
        if config.secure_aggregation.enabled:
            raise ValueError(
                "personal.method='modules' uploads only the shared tensors, which secure aggregation's "
                "fixed mask layout does not allow; set secure_aggregation.enabled=false or personal.method=ditto"
            )
        if config.local.algorithm == "scaffold":
            raise ValueError(
                "personal.method='modules' with local.algorithm='scaffold' is not supported "
                "(control variates cover every tensor); use local.algorithm=fedavg or fedprox"
            )
        if config.aggregation.lora != "naive":
            raise ValueError(
                f"personal.method='modules' needs aggregation.lora='naive', got {config.aggregation.lora!r}"
            )
    if f.qffl_q is not None:
        blockers = {
            "robust.aggregator": config.robust.aggregator != "fedavg",
            "privacy.enabled": config.privacy.enabled,
            "secure_aggregation.enabled": config.secure_aggregation.enabled,
            "aggregation.normalize": config.aggregation.normalize != "none",
        }
        bad = [k for k, v in blockers.items() if v]
        if bad:
            raise ValueError(
                f"fairness.qffl_q replaces the server's mean, which {bad} also replace(s) or hide(s); "
                "turn those off or set fairness.qffl_q=null"
            )


__all__ = ["PERSONAL_METHODS", "FairnessConfig", "PersonalConfig", "check_personal"]
