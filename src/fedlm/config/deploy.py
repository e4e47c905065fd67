"""Config of a deployed federation (Flower's Deployment Engine): reply timeouts.

No torch and no flwr here. A reply timeout is ``floor_s + payload_mb * seconds_per_mb``
for the message's payload, plus ``train_s`` for messages that run local training, so a
slow link or a large adapter stretches the wait instead of aborting the round. A node
that has not answered when its timeout expires counts as dropped for that round (the
secure-aggregation dropout path when that is on).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DeployConfig(BaseModel):
    """Timeouts and waits of ``fedlm deploy`` (ignored by the in-process simulator)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    floor_s: float = Field(
        60.0, description="least seconds the server waits for any reply (process start, polling)", gt=0
    )
    seconds_per_mb: float = Field(
        2.0, description="extra seconds per MB of the larger of request and expected reply (link speed)", ge=0
    )
    train_s: float = Field(
        300.0, description="extra seconds for a reply that includes local training", ge=0
    )
    register_s: float = Field(
        120.0, description="seconds the server waits for federation.min_nodes nodes to connect", gt=0
    )
    min_nodes: int | None = Field(
        None, description="nodes to wait for before round 1; None: every node the launcher started", ge=1
    )

    @model_validator(mode="after")
    def _sane(self) -> DeployConfig:
        if self.floor_s > 86_400:
            raise ValueError(f"deploy.floor_s={self.floor_s} exceeds a day; use seconds, e.g. 60")
        return self

    def timeout(self, payload_bytes: int, *, trains: bool = False) -> float:
        """Seconds to wait for the reply to a message of ``payload_bytes`` (request or reply)."""
        return self.floor_s + payload_bytes / 1e6 * self.seconds_per_mb + (self.train_s if trains else 0.0)
