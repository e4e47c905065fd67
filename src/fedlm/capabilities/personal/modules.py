"""Personal modules: FedPer (Arivazhagan et al. 2019) and, with ``head_steps``, FedRep (Collins et al. 2021).

The trainable tensors whose names match ``personal.local_modules`` stay on the client:
local training starts from the broadcast with the client's own tensors laid over it, they
are cut from the delta before the client stages (never encoded or sent; the server's
``validate`` expects only the shared names and the global copies never move), and kept
under ``personal`` in the client's state. FedRep first trains the personal modules alone
(the shared ones frozen), then the round's local steps train the shared ones with the
personal ones frozen.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.capabilities.personal.base import PERSONAL_KEY, PersonalMethod
from fedlm.engine.capability import EngineContext, MeanOffer, MeanRank
from fedlm.personal.modules import personal_names, split_personal
from fedlm.stages import RoundPlan, TensorDict


class PersonalModules(PersonalMethod):
    """Tensors matching ``personal.local_modules`` never leave the client."""

    name = "modules"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        self.own = personal_names(ctx.model.names(), self.p.local_modules)
        self.fedrep = self.p.head_steps is not None

    def start(self, client_state: dict[str, Any], state: TensorDict) -> TensorDict:
        kept = client_state.get(PERSONAL_KEY)
        return {**state, **kept} if kept else state

    def frozen(self) -> Collection[str]:
        """FedRep: the round's local steps leave the personal modules alone."""
        return self.own if self.fedrep else ()

    def fit_head(self, plan: RoundPlan, cid: str, train: list) -> None:
        """FedRep's first phase: ``personal.head_steps`` steps of the personal modules alone."""
        if not self.fedrep:
            return
        body = [n for n in self.model.names() if n not in self.own]
        self.steps(train, steps=self.p.head_steps, seed=self.seed(plan.seed, cid), lr=self.p.lr or plan.lr,
                   frozen=body)

    def shared(self, named: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in named.items() if k not in self.own}

    def mean(self) -> MeanOffer:
        """FedAvg's plain mean: the LoRA-aware stage would rebuild whole adapters from uploads
        that lack the personal tensors."""
        return MeanOffer(WeightedMean(weighting=self.config.federation.weighting), MeanRank.STRUCTURE)

    def after_local(self, plan: RoundPlan, cid: str, received: TensorDict, client_state: dict) -> dict:
        return {**client_state, PERSONAL_KEY: split_personal(self.model.get_state(), self.own)[1]}

    def own_model(self, cid: str, global_state: TensorDict, client_state: dict) -> TensorDict | None:
        kept = client_state.get(PERSONAL_KEY)
        return {**global_state, **kept} if kept else None
