"""The experiment schema: one frozen pydantic model per section.

Every field carries a description; validators reject bad values with the field, the
value and the fix, and never rewrite them. This module must not import torch.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedlm.config.attacks import AttackConfig
from fedlm.config.audit import AuditConfig
from fedlm.config.compression import CompressionConfig
from fedlm.config.data import DataConfig
from fedlm.config.deploy import DeployConfig
from fedlm.config.eval_harness import EvalHarnessConfig
from fedlm.config.explain import ExplainConfig, check_explain
from fedlm.config.hetero import AggregationConfig, LocalConfig, ResourcesConfig, check_hetero
from fedlm.config.personal import FairnessConfig, PersonalConfig, check_personal
from fedlm.config.privacy import PrivacyConfig, check_experiment
from fedlm.config.report import ReportConfig
from fedlm.config.robust import RobustConfig
from fedlm.config.secagg import SecAggConfig, check_composition
from fedlm.config.section import Section
from fedlm.config.server_opt import ServerOptConfig
from fedlm.config.strict import check_scalars

DEVICE_PATTERN = re.compile(r"cpu|auto|cuda(:[0-9]+)?")  # model.device, and the commands' --device


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m",
        description="Built-in preset (tiny-llama, char-llama, smollm2-135m), a local HF model directory, or a hub id.",
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype for training.")
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="pretrained loads the weights; random keeps only the architecture and tokenizer (pre-training).",
    )
    architecture: dict[str, int | float] = Field(
        default_factory=dict,
        description="Overrides of the HF config for random init, e.g. {hidden_size: 128, num_hidden_layers: 4}.",
    )
    seed: int = Field(0, description="Seed of random initialisation (tiny-llama, init=random, LoRA A).")
    device: str = Field(
        "cpu",
        description="Where clients train and models are scored: cpu, cuda, cuda:N, or auto (the first CUDA GPU "
        "when torch sees one, else cpu). Updates, aggregation and checkpoints stay on the CPU, so a run "
        "resumes on another device.",
    )

    @field_validator("device")
    @classmethod
    def _device_spelled(cls, v: str) -> str:
        if not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(f"model.device={v!r} is not a device; use cpu, cuda, cuda:N (N = GPU index) or auto")
        return v

    @model_validator(mode="after")
    def _architecture_needs_random(self) -> ModelConfig:
        if self.architecture and self.init != "random" and self.name not in ("tiny-llama", "char-llama"):
            raise ValueError(
                "model.architecture only applies to freshly initialised weights; set model.init=random "
                "or remove model.architecture"
            )
        return self


class LoraConfig(Section):
    enabled: bool = Field(True, description="Train LoRA adapters; false means full fine-tuning.")
    r: int = Field(8, description="LoRA rank.", ge=1, le=1024)
    alpha: float = Field(16.0, description="LoRA scaling numerator (scaling = alpha / r).", gt=0)
    dropout: float = Field(0.0, description="Dropout on the LoRA input.", ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt; 'auto' detects them from the architecture."
    )


class FederationConfig(Section):
    rounds: int = Field(3, description="Federated rounds.", ge=1)
    clients_per_round: int | None = Field(4, description="Clients sampled each round.", ge=1)
    fraction: float | None = Field(None, description="Share of clients sampled each round (instead of a count).", gt=0, le=1)
    local_steps: int | None = Field(3, description="Optimiser steps per client per round.", ge=1)
    local_epochs: float | None = Field(None, description="Passes over local data per round (instead of steps).", gt=0)
    batch_size: int = Field(4, description="Sequences per local step.", ge=1)
    lr: float = Field(5e-3, description="Client learning rate (AdamW) at round 1.", gt=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="How the client learning rate changes across rounds."
    )
    lr_schedule_unit: Literal["round", "step"] = Field(
        "round",
        description="What the schedule counts: 'round' gives every local step the round's lr; 'step' advances it "
        "at every local step over rounds x local_steps, so runs that differ in local_steps see the same lr at "
        "the same inner step (needs local_steps).",
    )
    min_lr_ratio: float = Field(0.1, description="Final lr / initial lr for cosine and linear.", ge=0, le=1)
    warmup: int = Field(
        0,
        description="Linear warm-up of the client lr over the first this-many schedule positions (rounds, or "
        "local steps with lr_schedule_unit=step): lr x (t + 1) / warmup at position t, then the schedule over "
        "the rest. 0 (default) starts at lr.",
        ge=0,
    )
    weight_decay: float = Field(0.0, description="AdamW weight decay.", ge=0)
    keep_optimizer_state: bool = Field(
        False, description="Keep each client's AdamW state across rounds (DiLoCo inner optimiser); it never leaves the client."
    )
    max_grad_norm: float | None = Field(1.0, description="Per-step gradient clipping (None disables).", gt=0)
    weighting: Literal["examples", "uniform"] = Field("examples", description="FedAvg weights.")
    min_updates: int = Field(1, description="Fewest valid updates a round needs.", ge=1)
    on_too_few_updates: Literal["skip", "abort"] = Field(
        "skip", description="What a round with fewer valid updates than min_updates does."
    )
    max_update_norm: float | None = Field(None, description="Reject updates whose L2 norm exceeds this.", gt=0)
    max_update_bytes: int | None = Field(None, description="Reject payloads larger than this many bytes.", gt=0)
    norm_guard: float | None = Field(
        10.0,
        description="Reject updates whose L2 norm exceeds this many times the round's median update norm (an "
        "honest-majority scale; see fedlm.aggregation.norm_guard). null turns the guard off. It is not applied "
        "under client-level DP (clipping bounds each update, and a cohort-relative rule would break the "
        "sensitivity bound), under secure aggregation (the server sees no single update) or in attack "
        "experiments (the configured defence is what is measured).",
        gt=1,
    )
    seed: int = Field(0, description="Seed of client sampling and local training.")

    @model_validator(mode="after")
    def _exactly_one(self) -> FederationConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError(
                "set exactly one of federation.local_steps and federation.local_epochs "
                "(use --set federation.local_steps=null to switch to epochs)"
            )
        if (self.clients_per_round is None) == (self.fraction is None):
            raise ValueError(
                "set exactly one of federation.clients_per_round and federation.fraction "
                "(use --set federation.clients_per_round=null to switch to a fraction)"
            )
        total = self.rounds * (self.local_steps or 1) if self.lr_schedule_unit == "step" else self.rounds
        if self.warmup >= total:
            raise ValueError(
                f"federation.warmup={self.warmup} leaves no {self.lr_schedule_unit} after the warm-up: the "
                f"schedule has {total}; set federation.warmup below {total}"
            )
        if self.lr_schedule_unit == "step" and self.local_steps is None:
            raise ValueError(
                "federation.lr_schedule_unit='step' counts rounds x local_steps, but local_epochs is set; "
                "set federation.local_steps, or use federation.lr_schedule_unit=round"
            )
        return self


class EvalConfig(Section):
    every: int = Field(1, description="Evaluate every N rounds (and always before and after).", ge=1)
    clients: Literal["sampled", "all"] = Field("all", description="Whose held-out data to evaluate on.")
    max_clients: int | None = Field(6, description="Evaluate at most this many clients (seeded choice).", ge=1)
    max_batches_per_client: int | None = Field(1, description="Cap on held-out batches per client.", ge=1)
    batch_size: int = Field(8, description="Sequences per evaluation batch.", ge=1)
    attack_prompts: int = Field(20, description="Triggered held-out prompts for the attack success rate.", ge=1)
    attack_max_new_tokens: int = Field(16, description="Greedy tokens generated per attack prompt.", ge=1)
    bias_probe: bool = Field(
        False, description="Score templated occupation x gendered-name sentences before and after training, and per client."
    )


class OutputConfig(Section):
    dir: str | None = Field(None, description="Run directory; default runs/<timestamp>.")
    checkpoint_every: int = Field(1, description="Checkpoint every N rounds.", ge=1)
    keep_checkpoints: int = Field(2, description="Most recent checkpoints kept.", ge=1)
    report: bool = Field(True, description="Write report.html at the end.")


class ExperimentConfig(Section):
    """A whole experiment. ``fedlm run`` with no config runs the defaults here."""

    name: str = Field("default", description="Experiment name, shown in reports.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    server_opt: ServerOptConfig = Field(default_factory=ServerOptConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    robust: RobustConfig = Field(default_factory=RobustConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    secure_aggregation: SecAggConfig = Field(default_factory=SecAggConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    eval_harness: EvalHarnessConfig = Field(default_factory=EvalHarnessConfig)
    personal: PersonalConfig = Field(default_factory=PersonalConfig)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_coerced_scalars(cls, raw: Any) -> Any:
        check_scalars(cls, raw)  # rounds=true, lr=.inf: refused, not read as 1 or accepted
        return raw

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        k = self.federation.clients_per_round
        if k is not None and self.robust.aggregator != "fedavg":
            self.robust.check_cohort(k)  # the bound each robust aggregator needs (n >= 2f+3 ...)
        d = self.data
        check_experiment(  # DP and audit checks; the exact client count is checked once data exists
            self.privacy, robust_aggregator=self.robust.aggregator, canaries=self.audit.canaries,
            known_clients=d.num_clients if d.partition != "natural" else d.max_clients,
            lm_format={"lm": True, "instruction": False, "messages": False, "prompt_completion": False}.get(d.format),
        )
        if self.secure_aggregation.enabled:
            check_composition(self)  # robust aggregators and codecs that need each update
        check_hetero(self)  # local objectives, LoRA aggregation, resource profiles
        check_explain(self)  # contribution cohort bound; needs individual updates
        check_personal(self)  # personal modules and q-FFL against what they cannot combine with
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError(f"name must be a non-empty string without '/', got {v!r}")
        return v
