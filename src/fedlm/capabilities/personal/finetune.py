"""Local fine-tuning of the final global adapter on each client's own data, after federation.

With ``personal.val_fraction`` the step count is chosen among 0 (the global model) ..
``personal.steps`` by the validation loss after each step of a run on the fit examples
(early stopping), and the model is then fine-tuned on all the client's examples for that
count.
"""

from __future__ import annotations

from fedlm.capabilities.personal.base import PersonalMethod
from fedlm.personal.selection import best_index
from fedlm.stages import TensorDict


class Finetune(PersonalMethod):
    name = "finetune"

    def personal_state(self, cid: str, global_state: TensorDict, client_states: dict[str, dict]) -> TensorDict:
        seed = self.seed(self.config.federation.seed, cid)
        lr = self.p.lr or self.config.federation.lr
        if not self.p.val_fraction:
            self.train_personal(cid, global_state, center=None, seed=seed, lr=lr)
            return self.model.get_state()
        self.model.set_state(global_state)
        losses = [self.val_loss(cid)]

        def score() -> None:
            losses.append(self.val_loss(cid))
            self.model.model.train()  # scoring left it in eval mode; the steps go on training

        self.steps(self.fit(cid), steps=self.personal_steps(cid), seed=seed, lr=lr, after_step=score)
        k = best_index(losses)
        self.choices[cid] = {"chosen": "personal" if k else "global", "steps": k, "val_loss_by_step": losses}
        self.model.set_state(global_state)
        if k:
            self.steps(self.data.clients[cid].train, steps=k, seed=seed, lr=lr)
        return self.model.get_state()
