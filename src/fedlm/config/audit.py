"""Config of the privacy audits: what the model memorised, and an audited epsilon.

Two audits, two sections:

* ``audit`` (:class:`AuditConfig`): after training, canary *text* exposure (Carlini et al.
  2019, "The Secret Sharer") and loss-based membership inference (Yeom et al. 2018,
  "Privacy Risk in Machine Learning"); code in ``fedlm.privacy.canaries`` and
  ``fedlm.privacy.audit``. Canaries are LM text, planted as extra texts of their client,
  which the LM format (``data.format="lm"``) trains on.
* ``privacy.audit`` (:class:`OneRunAuditConfig`): during training, an empirical lower
  bound on the client-level epsilon from one run (Steinke, Nasr and Jagielski 2023,
  "Privacy Auditing with One (1) Training Run"), with canary *clients* whose updates are
  random directions (Andrew et al. 2024, "One-shot Empirical Privacy Estimation for
  Federated Learning"); code in ``fedlm.privacy.one_run_audit`` and
  ``fedlm.privacy.canary_clients``.

This module must not import torch so that an experiment can be validated before any
tensor exists.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.errors import ConfigError


class AuditConfig(BaseModel):
    """Plant canaries before training; after training, measure exposure and MIA AUC."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Run the audit after the last round.")
    canaries: int = Field(
        0, ge=0, description="Canaries to plant (0: membership inference only)."
    )
    canary_clients: list[str] | Literal["auto"] = Field(
        "auto",
        description="Clients that hold canaries (canary i goes to the (i mod k)-th listed "
        "client), or 'auto': min(canaries, clients) clients drawn by `seed`.",
    )
    canary_repeats: int = Field(
        5, ge=1, description="Copies of each canary in its client's training text."
    )
    template: str = Field(
        "my secret code is {}", description="Canary sentence; '{}' marks where the secret goes."
    )
    alphabet: str = Field("0123456789", description="Symbols a secret is drawn from (distinct).")
    secret_length: int = Field(6, ge=1, description="Symbols per secret.")
    candidates: int = Field(
        1000,
        ge=1,
        description="Random secrets each canary is ranked against; the largest measurable "
        "exposure is log2(candidates + 1) bits.",
    )
    mia_examples: int | None = Field(
        256,
        ge=1,
        description="Score at most this many training and this many held-out examples for "
        "membership inference (null: all).",
    )
    batch_size: int = Field(32, ge=1, description="Sequences scored per forward pass.")
    seed: int = Field(0, description="Fixes canary secrets, placement, candidates, subsampling.")

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError(
                f"audit.template must contain '{{}}' exactly once (the secret's place), got {v!r}; "
                "e.g. 'my secret code is {}'"
            )
        return v

    @field_validator("alphabet")
    @classmethod
    def _distinct_symbols(cls, v: str) -> str:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(
                f"audit.alphabet must hold at least 2 distinct characters with no repeats, got "
                f"{v!r}; e.g. '0123456789'"
            )
        return v

    @field_validator("canary_clients")
    @classmethod
    def _clients_listed_once(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError(
                    "audit.canary_clients is an empty list; name at least one client or use 'auto'"
                )
            dupes = sorted({c for c in v if v.count(c) > 1})
            if dupes:
                raise ValueError(f"audit.canary_clients repeats {dupes!r}; list each client once")
        return v

    @model_validator(mode="after")
    def _check(self) -> AuditConfig:
        if self.canaries and not self.enabled:
            raise ValueError(
                f"audit.canaries={self.canaries} plants canaries but audit.enabled=false would "
                "never measure them; set audit.enabled=true or audit.canaries=0"
            )
        if isinstance(self.canary_clients, list):
            if self.canaries == 0:
                raise ValueError(
                    f"audit.canary_clients={self.canary_clients!r} only applies with "
                    "audit.canaries > 0; set audit.canaries or use canary_clients='auto'"
                )
            if len(self.canary_clients) > self.canaries:
                raise ValueError(
                    f"audit.canary_clients lists {len(self.canary_clients)} clients but "
                    f"audit.canaries={self.canaries}, so some would hold none; list at most "
                    f"{self.canaries} clients or raise audit.canaries"
                )
        space = len(self.alphabet) ** self.secret_length
        if self.canaries + self.candidates > space:
            raise ValueError(
                f"audit.canaries + audit.candidates = {self.canaries + self.candidates} exceeds "
                f"the {space} possible secrets (len(alphabet)={len(self.alphabet)} ** "
                f"secret_length={self.secret_length}); raise secret_length or lower candidates"
            )
        return self

    @property
    def exposure_ceiling(self) -> float:
        """The largest measurable exposure in bits, log2(candidates + 1)."""
        return math.log2(self.candidates + 1)

    def check_clients(self, client_ids: list[str]) -> None:
        """Cross-check against the federation: listed canary clients must exist.

        Raises:
            ConfigError: naming the unknown clients and some known ones.
        """
        if not isinstance(self.canary_clients, list):
            return
        known = set(client_ids)
        unknown = [c for c in self.canary_clients if c not in known]
        if unknown:
            shown = sorted(known)[:10]
            raise ConfigError(
                f"audit.canary_clients names unknown clients {unknown!r}; pick from "
                f"{shown!r}{' ...' if len(known) > 10 else ''} or use 'auto'"
            )


class OneRunAuditConfig(BaseModel):
    """The client-level one-run audit (Steinke, Nasr and Jagielski 2023) inside a run.

    ``canaries`` canary clients join the population; each is included in the run with
    probability 1/2 (a secret bit), and an included canary, when sampled like any client,
    sends a fixed random direction of norm ``privacy.clip_norm`` through the same clip,
    noise and aggregation. After the run each canary is scored by the inner product of the
    model's total change with its direction; the audit guesses "included" for the highest
    scores and "excluded" for the lowest and turns the number of correct guesses into an
    epsilon that the run provably exceeds with probability ``confidence``. The canaries
    perturb training a little (each is one more client).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description="Audit the run's client-level epsilon with canary clients.")
    canaries: int = Field(
        256, ge=2, le=100_000,
        description="m, canary clients (each included with probability 1/2); more canaries, tighter bound.",
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="Confidence of the audited lower bound (e.g. 0.95)."
    )

