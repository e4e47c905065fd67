"""The personalisation capability: each client's own model, and how it compares with the global one.

The method (``personal.method``) is one class per file in this package, found through
``fedlm.config.personal.PERSONAL_METHODS``; this module plugs it into the round and, at
the end of a run, asks every evaluation client (where its data and state are: in process,
or on its node in a deployment) to score its personal model on its own held-out data next
to the global model's score. ``summary.json``'s ``personal`` holds both and their fairness.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from fedlm.client.local import TrainOptions
from fedlm.config.personal import PERSONAL_METHODS
from fedlm.engine.capability import Capability, EngineContext, FinishedRun, LocalOutcome, MeanOffer
from fedlm.eval.fairness import client_fairness
from fedlm.eval.metrics import LMScore, score_lm
from fedlm.stages import RoundPlan, TensorDict


class Personalization(Capability):
    """A personal model per client (``personal.method``)."""

    name = "personal"

    @classmethod
    def build(cls, ctx: EngineContext) -> Personalization | None:
        return cls(ctx) if ctx.config.personal.method != "none" else None

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.method = PERSONAL_METHODS.create(ctx.config.personal.method, ctx=ctx)

    @property
    def choices(self) -> dict[str, dict[str, Any]]:
        """Client -> how it chose its personal model (``personal.val_fraction``)."""
        return self.method.choices

    # ------------------------------------------------------------------ the round
    def mean(self) -> MeanOffer | None:
        return self.method.mean()

    def client_start(self, plan: RoundPlan, client_id: str, start: TensorDict, client_state: dict[str, Any]) -> TensorDict:
        return self.method.start(client_state, start)

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        frozen = self.method.frozen()
        return replace(options, frozen=frozen) if frozen else options

    def before_train(self, plan: RoundPlan, client_id: str, examples: list, options: TrainOptions) -> dict[str, float]:
        self.method.fit_head(plan, client_id, examples)
        return {}

    def shared(self, named: dict[str, Any]) -> dict[str, Any]:
        return self.method.shared(named)

    def after_local(self, local: LocalOutcome) -> dict[str, Any]:
        return self.method.after_local(local.plan, local.client_id, local.received, local.client_state)

    # ------------------------------------------------------------------ the end of a run
    def personal_state(self, cid: str, global_state: TensorDict, client_states: dict[str, dict]) -> TensorDict | None:
        """This client's personal model (after its choice), or None when it has none."""
        return self.method.personal_state(cid, global_state, client_states)

    def client_query(self, client_id: str, global_state: TensorDict, client_state: dict[str, Any] | None,
                     request: dict[str, Any]) -> dict[str, Any]:
        """Held-out loss sums of this client's personal model, scored where its data is.

        ``personal`` is None when the client has no personal model and ``"global"`` when it
        chose the global one (whose score the server has already); only sums leave the client.
        """
        own = self.personal_state(client_id, global_state, {client_id: client_state or {}})
        selection = self.choices.get(client_id)
        if own is None:
            return {"personal": None, "selection": selection}
        if selection is not None and selection.get("chosen") == "global":
            return {"personal": "global", "selection": selection}
        return {"personal": heldout_sums(self.ctx, client_id, own), "selection": selection}

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        final = run.final
        ids = [c for c in final.get("clients", {}) if c in self.ctx.data.clients] or list(run.driver.eval_ids)
        answers = run.driver.ask_clients(self.name, run.state, ids, {})
        return {"personal": self.report(final, answers)}

    def evaluate(self, sim: Any, global_state: TensorDict, client_states: dict[str, dict],
                 client_ids: list[str] | None = None, *, global_eval: dict | None = None) -> dict[str, Any]:
        """Each client's held-out metrics with the global and its personal model, in process."""
        ids = list(client_ids or sim.eval_ids)
        g = global_eval if global_eval is not None else sim.evaluate(global_state, ids)
        answers = {cid: self.client_query(cid, global_state, client_states.get(cid), {}) for cid in ids}
        sim.model.set_state(global_state)  # leave the one model as the global one
        return self.report(g, answers)

    def report(self, global_eval: dict[str, Any], answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """``summary.json``'s ``personal`` from the global evaluation and the clients' answers."""
        scores: dict[str, tuple[dict, dict | None]] = {}
        for cid, answer in answers.items():
            if cid not in global_eval.get("clients", {}) or not isinstance(answer, dict):
                continue  # a deployed client's answer is hostile until checked: an unusable one counts as none
            g = global_eval["clients"][cid]
            own = answer.get("personal")
            scores[cid] = (g, g if own == "global" else _score(own))
        choices = {cid: a["selection"] for cid, a in answers.items()
                   if cid in scores and isinstance(a.get("selection"), dict)}
        return personal_report(self.ctx.config.personal.method, scores, choices)


def _score(sums: Any) -> dict | None:
    """Held-out metrics from a client's sums, or None when they are absent or not plausible sums."""
    if not isinstance(sums, dict):
        return None
    loss, correct, tokens = sums.get("loss_sum"), sums.get("correct"), sums.get("tokens")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (loss, correct, tokens))
    if not numbers or not math.isfinite(loss) or loss < 0 or not 0 <= correct <= tokens or tokens != int(tokens):
        return None
    return LMScore(float(loss), int(correct), int(tokens)).as_dict()


def heldout_sums(ctx: EngineContext, client_id: str, state: TensorDict) -> dict[str, Any]:
    """Held-out loss sums of ``state`` on ``client_id``'s data, as the evaluation scores them."""
    ev, model = ctx.config.eval, ctx.model
    model.set_state(state)
    score = score_lm(model.model, ctx.data.clients[client_id].heldout, pad_id=model.tokenizer.pad_token_id,
                     batch_size=ev.batch_size, max_batches=ev.max_batches_per_client)
    return {"loss_sum": score.loss_sum, "correct": score.correct, "tokens": score.tokens}


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


__all__ = ["Personalization", "heldout_sums", "personal_report"]
