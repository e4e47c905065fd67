"""The audit-trail capability: every round record gets its ``audit`` entry.

Runs last among the capabilities' ``after_round`` hooks, so the entry sees the round's
epsilon. The entry itself is computed from the record alone
(:func:`fedlm.report.audit_trail.round_audit`): cohort, dropouts, rejections and why,
clipped fraction, update norms, epsilon, bytes.
"""

from __future__ import annotations

from typing import Any

from fedlm.engine.capability import Capability, EngineContext
from fedlm.engine.checkpoint import ServerState
from fedlm.report.audit_trail import round_audit


class AuditTrail(Capability):
    """Always on: the report's audit table is built from these entries."""

    name = "audit_trail"

    @classmethod
    def build(cls, ctx: EngineContext) -> AuditTrail:
        return cls()

    def after_round(self, state: ServerState, record: dict[str, Any]) -> tuple[ServerState, dict[str, Any]]:
        return state, {**record, "audit": round_audit(record)}


__all__ = ["AuditTrail"]
