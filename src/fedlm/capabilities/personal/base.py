"""What every personalisation method shares: the client's own training steps and the choice.

A method (one class per file, named in ``personal.method`` through
``fedlm.config.personal.PERSONAL_METHODS``) overrides the hooks it needs:

* ``start`` / ``frozen`` / ``fit_head``: how the round's local training starts (the
  broadcast with the client's personal tensors, FedRep's head phase first);
* ``shared`` and ``mean``: what of the delta leaves the client, and the server mean that
  fits such uploads;
* ``after_local``: what the client keeps for its next round (personal tensors, a Ditto
  adapter, mixing weights), in its own state: checkpointed with the run in simulation, on
  the client's disk in a deployment; never sent;
* ``own_model``: the client's personal model at the end, before the choice that
  ``personal.val_fraction`` makes on examples held out of its personal training
  (:mod:`fedlm.personal.selection`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, ClassVar

from fedlm.client.trainer import steps_for, train_local
from fedlm.engine.capability import EngineContext, MeanOffer
from fedlm.eval.metrics import score_lm
from fedlm.personal.ditto import prox_toward
from fedlm.personal.selection import best_index, require_room, split_validation
from fedlm.seeds import derive_seed
from fedlm.stages import RoundPlan, TensorDict

PERSONAL_KEY = "personal"  # client state: this client's personal tensors (never leaves the client)
MIX_KEY = "mixing"  # client state (method=mix): the mixing logits by module
PERSONAL_STREAM = 3  # seed stream of the personal steps, apart from the global update's batches
VALIDATION_STREAM = 4  # seed stream of each client's validation split (personal.val_fraction)


class PersonalMethod:
    """Base of the personalisation methods: the client's own steps, scoring and choice.

    Args:
        ctx: the run's config, the one model and the data (a client reads only its own).
    """

    name: ClassVar[str] = "none"

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.config, self.model, self.data = ctx.config, ctx.model, ctx.data
        self.p = ctx.config.personal
        self.choices: dict[str, dict[str, Any]] = {}  # client -> how its personal model was chosen (val_fraction)
        self._splits: dict[str, tuple[list, list]] = {}  # client -> (fit, validation), made on first use
        if self.p.val_fraction:  # checked once, from the sizes (a deployment's server sees no examples)
            for cid, client in ctx.data.clients.items():
                if len(client.train):
                    require_room(len(client.train), self.p.val_fraction, client=cid)

    # ------------------------------------------------------------------ hooks (no-ops by default)
    def start(self, client_state: dict[str, Any], state: TensorDict) -> TensorDict:
        """The state local training starts from (the broadcast, by default)."""
        return state

    def frozen(self) -> Collection[str]:
        """Trainable names the round's local steps leave untouched."""
        return ()

    def fit_head(self, plan: RoundPlan, cid: str, train: list) -> None:
        """Work on the start state before the round's local steps."""

    def shared(self, named: dict[str, Any]) -> dict[str, Any]:
        """What of the client's tensors (or their shapes) leaves it."""
        return named

    def mean(self) -> MeanOffer | None:
        return None

    def after_local(self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict) -> dict:
        """The client state to keep; the model holds the round's local result."""
        return client_state

    def own_model(self, cid: str, global_state: TensorDict, client_state: dict) -> TensorDict | None:
        """The client's personal model before any choice, or None when it has none."""
        return None

    # ------------------------------------------------------------------ the personal model and the choice
    def personal_state(self, cid: str, global_state: TensorDict, client_states: dict[str, dict]) -> TensorDict | None:
        """This client's personal model, or None when it has none (never sampled).

        With ``personal.val_fraction`` it is the one the client chose on its validation split
        (possibly the global model), and ``self.choices[cid]`` says what was chosen and why.
        """
        own = self.own_model(cid, global_state, client_states.get(cid) or {})
        if own is None or not self.p.val_fraction:
            return own
        losses = []
        for state in (global_state, own):
            self.model.set_state(state)
            losses.append(self.val_loss(cid))
        pick = best_index(losses)
        self.choices[cid] = {"chosen": ("global", "personal")[pick], "val_loss": {"global": losses[0],
                                                                                 "personal": losses[1]}}
        return (global_state, own)[pick]

    # ------------------------------------------------------------------ the client's own steps
    def seed(self, plan_seed: int, cid: str, stream: int = PERSONAL_STREAM) -> int:
        return derive_seed(plan_seed, self.ctx.client_index(cid), stream)

    def personal_steps(self, cid: str) -> int:
        fed = self.config.federation
        return self.p.steps or steps_for(len(self.fit(cid)), batch_size=fed.batch_size,
                                         local_steps=fed.local_steps, local_epochs=fed.local_epochs)

    def split(self, cid: str) -> tuple[list, list]:
        """``(fit, validation)`` of the client's training examples; ``(all, [])`` without val_fraction."""
        if not self.p.val_fraction:
            return self.data.clients[cid].train, []
        if cid not in self._splits:
            seed = derive_seed(self.config.federation.seed, self.ctx.client_index(cid), VALIDATION_STREAM)
            self._splits[cid] = split_validation(self.data.clients[cid].train, self.p.val_fraction, seed=seed,
                                                 client=cid)
        return self._splits[cid]

    def fit(self, cid: str) -> list:
        """The examples the client's personal model trains on (all but its validation split)."""
        return self.split(cid)[0]

    def val_loss(self, cid: str) -> float:
        """Mean next-token loss (nats) of the model as it stands on the client's validation split."""
        return self.mean_loss(self.split(cid)[1], batch_size=self.config.eval.batch_size)

    def mean_loss(self, examples: list, *, batch_size: int, max_batches: int | None = None) -> float:
        """Mean next-token loss (nats per labelled token) of the model as it stands on ``examples``."""
        s = score_lm(self.model.model, examples, pad_id=self.model.tokenizer.pad_token_id, batch_size=batch_size,
                     max_batches=max_batches)
        return s.loss_sum / max(s.tokens, 1)

    def train_personal(self, cid: str, start: TensorDict, *, center: TensorDict | None, seed: int, lr: float) -> None:
        """Train from ``start`` on the client's own data; Ditto's prox toward ``center`` after each step."""
        self.model.set_state(start)
        named = list(zip(self.model.names(), self.model.parameters(), strict=True))
        lam = self.p.lam
        after = (lambda: prox_toward(named, center, lr=lr, lam=lam)) if center is not None else None
        self.steps(self.fit(cid), steps=self.personal_steps(cid), seed=seed, lr=lr, after_step=after)

    def steps(self, examples: list, *, steps: int, seed: int, lr: float,
              after_step: Callable[[], None] | None = None, frozen: Collection[str] = ()) -> None:
        """Local steps of the model as it stands, with the federation's batch size, decay and clipping."""
        fed = self.config.federation
        train_local(self.model, examples, steps=steps, batch_size=fed.batch_size, lr=lr, seed=seed,
                    weight_decay=fed.weight_decay, max_grad_norm=fed.max_grad_norm,
                    optimizer=self.config.local.optimizer, after_step=after_step, frozen=frozen)


__all__ = ["MIX_KEY", "PERSONAL_KEY", "PersonalMethod"]
