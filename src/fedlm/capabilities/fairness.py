"""The fair-aggregation capability: q-FFL (Li et al. 2020, "Fair Resource Allocation in
Federated Learning").

Each client reports its loss ``F_k`` at the broadcast model (its first training batches,
scored before the round's steps; it rides in the update's metrics), and the server's mean
becomes q-FedAvg's (:mod:`fedlm.aggregation.qffl`), which weighs clients by ``F_k^q``.
"""

from __future__ import annotations

from fedlm.aggregation.qffl import LOSS_KEY, QFFLMean
from fedlm.client.local import TrainOptions
from fedlm.engine.capability import Capability, EngineContext, MeanOffer, MeanRank
from fedlm.eval.metrics import score_lm
from fedlm.stages import RoundPlan


class FairAggregation(Capability):
    """q-FFL's mean and each client's loss at the broadcast."""

    name = "fairness"

    @classmethod
    def build(cls, ctx: EngineContext) -> FairAggregation | None:
        return cls(ctx) if ctx.config.fairness.qffl_q is not None else None

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        f = ctx.config.fairness
        self.stage = QFFLMean(q=f.qffl_q, lipschitz=f.qffl_lipschitz, weighting=ctx.config.federation.weighting)

    def mean(self) -> MeanOffer:
        return MeanOffer(self.stage, MeanRank.OBJECTIVE)

    def before_train(self, plan: RoundPlan, client_id: str, examples: list, options: TrainOptions) -> dict[str, float]:
        """``F_k``: the mean loss (nats/token) on the first training batches at the start state."""
        if client_id not in self.ctx.data.clients:  # the server's own update (a root set) has no F_k
            return {}
        model, cfg = self.ctx.model, self.ctx.config
        s = score_lm(model.model, examples, pad_id=model.tokenizer.pad_token_id, batch_size=cfg.federation.batch_size,
                     max_batches=cfg.fairness.loss_batches)
        return {LOSS_KEY: s.loss_sum / max(s.tokens, 1)}


__all__ = ["FairAggregation"]
