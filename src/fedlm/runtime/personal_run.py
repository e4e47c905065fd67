"""Personalisation and fair aggregation inside a simulated run: the glue.

The math lives in :mod:`fedlm.personal` (which tensors stay local, Ditto's proximal
step), :mod:`fedlm.aggregation.qffl` (q-FedAvg) and :mod:`fedlm.eval.fairness`. This
module is what the simulator calls:

* per client, before local training: the start state (the broadcast with the client's
  personal modules laid over it) and, for q-FFL, the loss ``F_k`` at that state, which
  rides in the update's metrics;
* the upload: personal modules are cut from the delta, so they never leave the client;
* per client, after local training: the personal tensors (modules), the Ditto
  adapter trained toward the broadcast, or the local adapter and its learnt mixing
  weights with the global one (mix), kept in the client's own state (checkpointed
  with the run in simulation, on the client's disk in a deployment; never sent);
* after the run: every evaluation client scored on its held-out data with the global
  model and with its personal model, and the fairness figures of both. With
  ``personal.val_fraction`` the client first chooses its personal model on examples held
  out of its personal training (:mod:`fedlm.personal.selection`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.qffl import LOSS_KEY, QFFLMean
from fedlm.client.trainer import steps_for, train_local
from fedlm.config.schema import ExperimentConfig
from fedlm.eval.fairness import client_fairness
from fedlm.eval.metrics import score_lm
from fedlm.personal.ditto import prox_toward
from fedlm.personal.mixing import alphas, learn_mixing, mixed
from fedlm.personal.modules import personal_names, split_personal
from fedlm.personal.selection import best_index, require_room, split_validation
from fedlm.stages import RoundPlan, TensorDict

PERSONAL_KEY = "personal"  # client state: this client's personal tensors (never leaves the client)
MIX_KEY = "mixing"  # client state (method=mix): the mixing logits by module
_PERSONAL_STREAM = 3  # seed stream of the personal steps, apart from the global update's batches
_VALIDATION_STREAM = 4  # seed stream of each client's validation split (personal.val_fraction)


def shared_shapes(config: ExperimentConfig, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The tensors that are federated: all but the personal modules (what the server validates)."""
    if config.personal.method != "modules":
        return shapes
    own = personal_names(shapes, config.personal.local_modules)
    return {k: v for k, v in shapes.items() if k not in own}


def mean_stage(config: ExperimentConfig) -> WeightedMean | None:
    """The aggregate stage this module decides, else None (the usual choice applies).

    q-FFL's stage when ``fairness.qffl_q`` is set; with personal modules FedAvg's plain
    mean, since the LoRA stage's error log rebuilds whole adapters from the uploads,
    which lack the personal tensors.
    """
    f = config.fairness
    if f.qffl_q is not None:
        return QFFLMean(q=f.qffl_q, lipschitz=f.qffl_lipschitz, weighting=config.federation.weighting)
    if config.personal.method == "modules":
        return WeightedMean(weighting=config.federation.weighting)
    return None


class PersonalRun:
    """The personalisation side of one simulation.

    Args:
        config: the experiment.
        model: the one base model (``AdaptedModel``).
        data: every client's examples (each client reads only its own).
    """

    def __init__(self, config: ExperimentConfig, model, data) -> None:
        self.config, self.model, self.data = config, model, data
        self.p = config.personal
        self.method = self.p.method
        self.client_ids = data.ids()
        self.own = personal_names(model.names(), self.p.local_modules) if self.method == "modules" else set()
        self.qffl = config.fairness.qffl_q is not None
        self.fedrep = self.method == "modules" and self.p.head_steps is not None
        self.choices: dict[str, dict[str, Any]] = {}  # client -> how its personal model was chosen (val_fraction)
        self._splits: dict[str, tuple[list, list]] = {}  # client -> (fit, validation), made on first use
        if self.p.val_fraction:  # checked once, from the sizes (a deployment's server sees no examples)
            for cid, client in data.clients.items():
                if len(client.train):
                    require_room(len(client.train), self.p.val_fraction, client=cid)

    # ------------------------------------------------------------------ client
    def start(self, cid: str, state: TensorDict, client_state: dict | None) -> TensorDict:
        """The state local training starts from: the broadcast with this client's personal modules."""
        kept = (client_state or {}).get(PERSONAL_KEY) if self.method == "modules" else None
        return {**state, **kept} if kept else state

    def broadcast_loss(self, cid: str, train: list) -> dict[str, float]:
        """q-FFL's ``F_k``: mean loss on the first training batches at the start state ({} when off)."""
        if not self.qffl or cid not in self.client_ids:
            return {}
        return {LOSS_KEY: self._mean_loss(train, batch_size=self.config.federation.batch_size,
                                          max_batches=self.config.fairness.loss_batches)}

    def fit_head(self, plan: RoundPlan, cid: str, train: list) -> None:
        """FedRep's first phase: the personal modules alone, from the start state the model holds.

        ``personal.head_steps`` steps on the round's examples with every shared tensor frozen;
        a no-op unless set.
        """
        if not self.fedrep:
            return
        from fedlm.runtime.simulation import derive_seed

        body = [n for n in self.model.names() if n not in self.own]
        self._steps(train, steps=self.p.head_steps, seed=derive_seed(plan.seed, self._index(cid), _PERSONAL_STREAM),
                    lr=self.p.lr or plan.lr, frozen=body)

    def train_kwargs(self) -> dict[str, Any]:
        """What the round's local training needs from personalisation: FedRep freezes the personal modules."""
        return {"frozen": self.own} if self.fedrep else {}

    def shared(self, delta: TensorDict) -> TensorDict:
        """The upload: the delta without the personal modules."""
        return split_personal(delta, self.own)[0] if self.own else delta

    def after_local(self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict) -> dict:
        """Keep the personal part in the client's state (the model holds the local result).

        ``modules``: the trained personal tensors. ``ditto``: the personal adapter ``v``
        (from the client's last one, or the broadcast the first time) trained for
        ``personal.steps`` steps on ``F_k(v) + lam/2 ||v - w||^2`` with ``w`` the broadcast.
        """
        if self.method == "modules":
            return {**client_state, PERSONAL_KEY: split_personal(self.model.get_state(), self.own)[1]}
        if self.method not in ("ditto", "mix"):
            return client_state
        from fedlm.runtime.simulation import derive_seed  # here: the simulation imports this module

        v = client_state.get(PERSONAL_KEY) or received
        seed = derive_seed(plan.seed, self._index(cid), _PERSONAL_STREAM)
        center = received if self.method == "ditto" else None  # mix: the local adapter trains freely
        self._train_personal(cid, v, center=center, seed=seed, lr=self.p.lr or plan.lr)
        v = self.model.get_state()
        if self.method == "ditto":
            return {**client_state, PERSONAL_KEY: v}
        theta = learn_mixing(self.model, self._fit(cid), received, v, client_state.get(MIX_KEY) or {},
                             steps=self._personal_steps(cid), batch_size=self.config.federation.batch_size,
                             lr=self.p.mix_lr, seed=seed + 1)
        return {**client_state, PERSONAL_KEY: v, MIX_KEY: theta}

    def _index(self, cid: str) -> int:
        """The client's position among the sorted ids (its seed stream), as in the simulator."""
        return self.client_ids.index(cid) if cid in self.client_ids else len(self.client_ids)

    def _personal_steps(self, cid: str) -> int:
        fed = self.config.federation
        return self.p.steps or steps_for(len(self._fit(cid)), batch_size=fed.batch_size,
                                         local_steps=fed.local_steps, local_epochs=fed.local_epochs)

    def _split(self, cid: str) -> tuple[list, list]:
        """``(fit, validation)`` of the client's training examples; ``(all, [])`` without val_fraction."""
        if not self.p.val_fraction:
            return self.data.clients[cid].train, []
        if cid not in self._splits:
            from fedlm.runtime.simulation import derive_seed

            seed = derive_seed(self.config.federation.seed, self._index(cid), _VALIDATION_STREAM)
            self._splits[cid] = split_validation(self.data.clients[cid].train, self.p.val_fraction, seed=seed,
                                                 client=cid)
        return self._splits[cid]

    def _fit(self, cid: str) -> list:
        """The examples the client's personal model trains on (all but its validation split)."""
        return self._split(cid)[0]

    def _val_loss(self, cid: str) -> float:
        """Mean next-token loss (nats) of the model as it stands on the client's validation split."""
        return self._mean_loss(self._split(cid)[1], batch_size=self.config.eval.batch_size)

    def _mean_loss(self, examples: list, *, batch_size: int, max_batches: int | None = None) -> float:
        """Mean next-token loss (nats per labelled token) of the model as it stands on ``examples``."""
        s = score_lm(self.model.model, examples, pad_id=self.model.tokenizer.pad_token_id, batch_size=batch_size,
                     max_batches=max_batches)
        return s.loss_sum / max(s.tokens, 1)

    def _train_personal(self, cid: str, start: TensorDict, *, center: TensorDict | None, seed: int, lr: float) -> None:
        """Train from ``start`` on the client's own data; Ditto's prox toward ``center`` after each step."""
        self.model.set_state(start)
        named = list(zip(self.model.names(), self.model.parameters(), strict=True))
        lam = self.p.lam
        after = (lambda: prox_toward(named, center, lr=lr, lam=lam)) if center is not None else None
        self._steps(self._fit(cid), steps=self._personal_steps(cid), seed=seed, lr=lr, after_step=after)

    def _steps(self, examples: list, *, steps: int, seed: int, lr: float,
               after_step: Callable[[], None] | None = None, frozen: Collection[str] = ()) -> None:
        """Local steps of the model as it stands, with the federation's batch size, decay and clipping."""
        fed = self.config.federation
        train_local(self.model, examples, steps=steps, batch_size=fed.batch_size, lr=lr, seed=seed,
                    weight_decay=fed.weight_decay, max_grad_norm=fed.max_grad_norm,
                    optimizer=self.config.local.optimizer, after_step=after_step, frozen=frozen)

    # ------------------------------------------------------------------ eval
    def personal_state(self, cid: str, global_state: TensorDict, client_states: dict[str, dict]) -> TensorDict | None:
        """This client's personal model, or None when it has none (never sampled; finetune trains one).

        With ``personal.val_fraction`` it is the one the client chose on its validation split
        (possibly the global model), and ``self.choices[cid]`` says what was chosen and why.
        """
        kept = (client_states.get(cid) or {}).get(PERSONAL_KEY)
        own: TensorDict | None = None
        if self.method == "modules":
            own = {**global_state, **kept} if kept else None
        elif self.method == "ditto":
            own = kept
        elif self.method == "mix":
            theta = (client_states.get(cid) or {}).get(MIX_KEY)
            own = mixed(global_state, kept, alphas(theta)) if kept and theta else None
        elif self.method == "finetune":
            return self._finetune(cid, global_state)
        if own is None or not self.p.val_fraction:
            return own
        losses = []
        for state in (global_state, own):
            self.model.set_state(state)
            losses.append(self._val_loss(cid))
        pick = best_index(losses)
        self.choices[cid] = {"chosen": ("global", "personal")[pick], "val_loss": {"global": losses[0],
                                                                                 "personal": losses[1]}}
        return (global_state, own)[pick]

    def _finetune(self, cid: str, global_state: TensorDict) -> TensorDict:
        """Local fine-tuning of the global model; with val_fraction, for the step count its split chose.

        The count is chosen among 0 (the global model) .. ``personal.steps`` by the validation
        loss after each step of a run on the fit examples; the model is then fine-tuned on all the
        client's examples for that count.
        """
        from fedlm.runtime.simulation import derive_seed

        seed = derive_seed(self.config.federation.seed, self._index(cid), _PERSONAL_STREAM)
        lr = self.p.lr or self.config.federation.lr
        if not self.p.val_fraction:
            self._train_personal(cid, global_state, center=None, seed=seed, lr=lr)
            return self.model.get_state()
        self.model.set_state(global_state)
        losses = [self._val_loss(cid)]

        def score() -> None:
            losses.append(self._val_loss(cid))
            self.model.model.train()  # scoring left it in eval mode; the steps go on training

        self._steps(self._fit(cid), steps=self._personal_steps(cid), seed=seed, lr=lr, after_step=score)
        k = best_index(losses)
        self.choices[cid] = {"chosen": "personal" if k else "global", "steps": k, "val_loss_by_step": losses}
        self.model.set_state(global_state)
        if k:
            self._steps(self.data.clients[cid].train, steps=k, seed=seed, lr=lr)
        return self.model.get_state()

    def evaluate(self, sim, global_state: TensorDict, client_states: dict[str, dict],
                 client_ids: list[str] | None = None, *, global_eval: dict | None = None) -> dict[str, Any]:
        """Each client's held-out metrics with the global and with its personal model, and their fairness.

        Args:
            sim: the ``Simulation`` (its ``evaluate`` scores one state on given clients).
            global_eval: an evaluation of ``global_state`` already made (reused, not recomputed).
        """
        ids = list(client_ids or sim.eval_ids)
        g = global_eval if global_eval is not None else sim.evaluate(global_state, ids)
        scores = {}
        for cid in ids:
            own = self.personal_state(cid, global_state, client_states)
            if own is not None and self.choices.get(cid, {}).get("chosen") == "global":
                scores[cid] = (g["clients"][cid], g["clients"][cid])  # it chose the global model: scored already
                continue
            scores[cid] = (g["clients"][cid], sim.evaluate(own, [cid])["clients"][cid] if own is not None else None)
        sim.model.set_state(global_state)  # leave the one model as the global one
        return personal_report(self.method, scores, self.choices)

    def summary(self, sim, global_state: TensorDict, client_states: dict[str, dict], final: dict) -> dict[str, Any]:
        """summary.json's ``fairness`` (of the final global model) and ``personal`` (None without a method)."""
        out: dict[str, Any] = {"fairness": client_fairness(final.get("clients", {})), "personal": None}
        if self.method != "none":
            ids = [c for c in final.get("clients", {}) if c in self.data.clients] or None
            out["personal"] = self.evaluate(sim, global_state, client_states, ids, global_eval=final)
        return out


def personal_report(method: str, scores: dict[str, tuple[dict, dict | None]],
                    choices: dict[str, dict] | None = None) -> dict[str, Any]:
    """summary.json's ``personal``: each client's (global, personal) held-out metrics and their fairness.

    A client without a personal model (``None``: never sampled) counts with its global metrics.
    ``choices``: how clients chose their personal model on their validation split (val_fraction).
    """
    clients = {cid: {"global": g, "personal": g if p is None else p, "has_personal": p is not None}
               for cid, (g, p) in scores.items()}
    for cid, choice in (choices or {}).items():
        if cid in clients:
            clients[cid]["selection"] = choice
    return {
        "method": method,
        "clients": clients,
        "fairness": {
            "global": client_fairness({c: v["global"] for c, v in clients.items()}),
            "personal": client_fairness({c: v["personal"] for c, v in clients.items()}),
        },
    }


__all__ = ["PERSONAL_KEY", "PersonalRun", "mean_stage", "personal_report", "shared_shapes"]
