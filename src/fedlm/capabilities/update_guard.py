"""The update guard: the default defence against a single blown-up update.

One finite update of norm 1e30 turns a plain mean's global model to NaN in one round.
:class:`~fedlm.aggregation.norm_guard.NormGuard` (``federation.norm_guard``, a factor of
the round's median update norm) rejects such updates after validation. It is left out
where it cannot or must not decide:

* client-level DP: every update is already clipped to ``C`` (and re-clipped by the server
  in central mode), and a rule relative to the other clients' norms would let one client's
  presence change who else is counted, which the sensitivity bound does not cover;
* secure aggregation: the server sees only the sum (clients check their own norm);
* attack experiments (``attack.kind``): the configured defence is what is measured.
"""

from __future__ import annotations

from fedlm.aggregation.norm_guard import NormGuard
from fedlm.engine.capability import Capability, EngineContext
from fedlm.stages import Stage


class UpdateGuard(Capability):
    name = "update_guard"

    @classmethod
    def build(cls, ctx: EngineContext) -> UpdateGuard | None:
        c = ctx.config
        factor = c.federation.norm_guard
        off = c.privacy.enabled or c.secure_aggregation.enabled or c.attack.kind != "none"
        return None if factor is None or off else cls(factor)

    def __init__(self, factor: float) -> None:
        self.stage = NormGuard(factor=factor)

    def server_stages(self) -> list[Stage]:
        return [self.stage]


__all__ = ["UpdateGuard"]
