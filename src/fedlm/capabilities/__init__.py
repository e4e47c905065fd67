"""Capabilities: plug-ins to the one round and the one loop (:mod:`fedlm.engine.capability`).

``CAPABILITIES`` lists them in hook order: at every hook the engine calls the run's
capabilities in this order. Each class's ``build`` returns None when its config section
leaves it off. ``build_engine`` is how a run (``fedlm run``, a deployment's server and
clients, a test) gets a :class:`~fedlm.engine.simulation.Simulation` with them.

The order matters where two capabilities touch the same thing: resource profiles set a
client's steps before an attacker's longer training overrides them; q-FFL scores the start
state before FedRep's head phase changes it; SCAFFOLD's variate is kept before the personal
tensors; DP's epsilon is in a record before the audit trail reads it (last).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlm.capabilities.adversary import Adversary
from fedlm.capabilities.audit_trail import AuditTrail
from fedlm.capabilities.contribution import Contribution
from fedlm.capabilities.dp import DifferentialPrivacy
from fedlm.capabilities.evaluation import Benchmarks, BiasProbe
from fedlm.capabilities.fairness import FairAggregation
from fedlm.capabilities.hetero import Heterogeneity
from fedlm.capabilities.personal import Personalization
from fedlm.capabilities.privacy_audit import CanaryAudit
from fedlm.capabilities.robust import RobustAggregation
from fedlm.capabilities.secagg import SecureAggregation
from fedlm.capabilities.update_guard import UpdateGuard
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, RowsHook
from fedlm.data.sources import Record
from fedlm.engine.capability import Capability, EngineContext
from fedlm.engine.simulation import Simulation
from fedlm.models.adapters import AdaptedModel
from fedlm.registry import Registry

CAPABILITIES: Registry[type[Capability]] = Registry("capability")
for _cls in (Heterogeneity, FairAggregation, Personalization, UpdateGuard, RobustAggregation, Adversary,
             DifferentialPrivacy, SecureAggregation, Contribution, CanaryAudit, BiasProbe, Benchmarks, AuditTrail):
    CAPABILITIES.register(_cls.name, _cls)


def build_capabilities(ctx: EngineContext) -> list[Capability]:
    """The capabilities ``ctx.config`` turns on, in hook order."""
    built = (CAPABILITIES.factory(name).build(ctx) for name in CAPABILITIES.in_order())
    return [cap for cap in built if cap is not None]


def build_engine(config: ExperimentConfig, model: AdaptedModel, data: FederatedData, *,
                 extra: Sequence[Capability] = ()) -> Simulation:
    """A :class:`Simulation` with the config's capabilities, then ``extra`` (a user's or a test's own)."""
    caps = build_capabilities(EngineContext(config, model, data))
    return Simulation(config, model, data, capabilities=[*caps, *extra])


def rows_hook(config: ExperimentConfig) -> RowsHook | None:
    """Every capability's rows hook, composed in order (poisoned rows, then canaries); None if none."""
    return chain_hooks(*(CAPABILITIES.factory(n).rows_hook(config) for n in CAPABILITIES.in_order()))


def chain_hooks(*hooks: RowsHook | None) -> RowsHook | None:
    """Compose rows hooks left to right, skipping None (None if all are None)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None

    def chained(rows: dict[str, list[Record]]) -> dict[str, list[Record]]:
        for h in live:
            rows = h(rows)
        return rows

    return chained


__all__ = [
    "CAPABILITIES",
    "Adversary",
    "AuditTrail",
    "Benchmarks",
    "BiasProbe",
    "CanaryAudit",
    "Contribution",
    "DifferentialPrivacy",
    "FairAggregation",
    "Heterogeneity",
    "Personalization",
    "RobustAggregation",
    "SecureAggregation",
    "UpdateGuard",
    "build_capabilities",
    "build_engine",
    "chain_hooks",
    "rows_hook",
]
