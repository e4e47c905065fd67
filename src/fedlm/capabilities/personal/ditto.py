"""Ditto (Li et al. 2021): a personal adapter regularised toward the global one.

After the usual global update, the client trains its personal adapter ``v`` (from its last
one, or the broadcast the first time) for ``personal.steps`` steps on
``F_k(v) + lam/2 ||v - w||^2`` with ``w`` the broadcast, Ditto's proximal term applied as
its exact step after each optimiser step (``lam = inf`` pins ``v`` to the global adapter).
"""

from __future__ import annotations

from fedlm.capabilities.personal.base import PERSONAL_KEY, PersonalMethod
from fedlm.stages import RoundPlan, TensorDict


class Ditto(PersonalMethod):
    name = "ditto"

    def after_local(self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict) -> dict:
        v = client_state.get(PERSONAL_KEY) or received
        self.train_personal(cid, v, center=received, seed=self.seed(plan.seed, cid), lr=self.p.lr or plan.lr)
        return {**client_state, PERSONAL_KEY: self.model.get_state()}

    def own_model(self, cid: str, global_state: TensorDict, client_state: dict) -> TensorDict | None:
        return client_state.get(PERSONAL_KEY)
