"""Mixing a local adapter with the global one (FedDPA style).

The client trains a local adapter freely next to the global one and learns, on its data,
one mixing weight per module, ``w + sigmoid(theta_m)(v - w)`` (:mod:`fedlm.personal.mixing`:
the logits' gradient is one dot product per module from a backward pass through the mixed
model); adapter and logits stay in the client's state.
"""

from __future__ import annotations

from fedlm.capabilities.personal.base import MIX_KEY, PERSONAL_KEY, PersonalMethod
from fedlm.personal.mixing import alphas, learn_mixing, mixed
from fedlm.stages import RoundPlan, TensorDict


class Mix(PersonalMethod):
    name = "mix"

    def after_local(self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict) -> dict:
        v = client_state.get(PERSONAL_KEY) or received
        seed = self.seed(plan.seed, cid)
        self.train_personal(cid, v, center=None, seed=seed, lr=self.p.lr or plan.lr)
        v = self.model.get_state()
        theta = learn_mixing(self.model, self.fit(cid), received, v, client_state.get(MIX_KEY) or {},
                             steps=self.personal_steps(cid), batch_size=self.config.federation.batch_size,
                             lr=self.p.mix_lr, seed=seed + 1)
        return {**client_state, PERSONAL_KEY: v, MIX_KEY: theta}

    def own_model(self, cid: str, global_state: TensorDict, client_state: dict) -> TensorDict | None:
        kept, theta = client_state.get(PERSONAL_KEY), client_state.get(MIX_KEY)
        return mixed(global_state, kept, alphas(theta)) if kept and theta else None
