"""Build the client and server stage pipelines from the core config and the capabilities.

The core pipeline is what every run has:

    client:  encode                                   (the upload codec)
    server:  decode -> validate -> mean -> optimize   (FedAvg's weighted mean, the server optimizer)

Capabilities add stages (placed by kind, in capability order, a kind's core stage first),
may replace decode -> validate (``server_intake``) and may offer the aggregate stage
(``mean``, the highest :class:`~fedlm.engine.capability.MeanRank` wins). The result is
checked once by :class:`~fedlm.stages.Pipeline` against the canonical kind order.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.server_opt import server_optimizer_from_config
from fedlm.aggregation.validate import Validate
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import DecodeStage, EncodeStage
from fedlm.config.schema import ExperimentConfig
from fedlm.engine.capability import Capability, MeanOffer, MeanRank
from fedlm.errors import PipelineError
from fedlm.stages import CLIENT_ORDER, SERVER_ORDER, Pipeline, Stage


def client_pipeline(config: ExperimentConfig, capabilities: Sequence[Capability]) -> Pipeline:
    """Client stages in execution order: transform -> clip -> noise -> encode -> mask."""
    comp = config.compression
    core: list[Stage] = [EncodeStage(upload_codec(config), error_feedback=comp.error_feedback)]
    added = [s for cap in capabilities for s in cap.client_stages()]
    return Pipeline(_by_kind(core, added, CLIENT_ORDER), order=CLIENT_ORDER, side="client")


def server_pipeline(
    config: ExperimentConfig, shapes: dict[str, tuple[int, ...]], capabilities: Sequence[Capability]
) -> Pipeline:
    """Server stages in execution order: unmask -> decode -> validate -> aggregate -> noise -> optimize.

    ``shapes`` are the tensors the server receives (the shared ones).
    """
    fed = config.federation
    intake = _intake(capabilities) or [
        DecodeStage(upload_codec(config), shapes=shapes, max_bytes=fed.max_update_bytes),
        Validate(shapes, max_norm=fed.max_update_norm, max_bytes=fed.max_update_bytes),
    ]
    core = [*intake, choose_mean(config, capabilities).stage, server_optimizer_from_config(config.server_opt)]
    added = [s for cap in capabilities for s in cap.server_stages()]
    return Pipeline(_by_kind(core, added, SERVER_ORDER), order=SERVER_ORDER, side="server")


def choose_mean(config: ExperimentConfig, capabilities: Sequence[Capability]) -> MeanOffer:
    """The aggregate stage: the highest-ranked capability offer, else FedAvg's weighted mean."""
    offers = [(cap.name, offer) for cap in capabilities if (offer := cap.mean()) is not None]
    if not offers:
        return MeanOffer(WeightedMean(weighting=config.federation.weighting), MeanRank.REFINEMENT)
    top = max(offer.rank for _, offer in offers)
    winners = [(name, offer) for name, offer in offers if offer.rank == top]
    if len(winners) > 1:
        raise PipelineError(
            f"capabilities {[n for n, _ in winners]} each offer the server's mean at the same rank "
            f"({top.name}); only one can aggregate: turn one of them off"
        )
    return winners[0][1]


def _intake(capabilities: Sequence[Capability]) -> list[Stage] | None:
    offers = [(cap.name, stages) for cap in capabilities if (stages := cap.server_intake()) is not None]
    if len(offers) > 1:
        raise PipelineError(f"capabilities {[n for n, _ in offers]} each replace the server's intake; only one can")
    return offers[0][1] if offers else None


def _by_kind(core: list[Stage], added: list[Stage], order: Sequence[str]) -> list[Stage]:
    """Core and added stages in canonical kind order: within a kind, core first, then added in order.

    Placing by kind is what lets a capability add a stage without knowing the others.
    """
    for stage in added:
        if stage.kind not in order:
            raise PipelineError(f"stage {stage.name!r} has kind {stage.kind!r}; allowed kinds: {list(order)}")
    out: list[Stage] = []
    for kind in order:
        out += [s for s in core if s.kind == kind] + [s for s in added if s.kind == kind]
    return out


def upload_codec(config: ExperimentConfig):
    """Codec of client updates (the uplink)."""
    name, params = config.compression.codec_spec("upload")
    return CODECS.create(name, **params)


def download_codec(config: ExperimentConfig):
    """Codec of the broadcast global adapter (the downlink)."""
    name, params = config.compression.codec_spec("download")
    return CODECS.create(name, **params)


INTAKE_KINDS = ("unmask", "decode", "validate")
COMBINE_KINDS = ("aggregate", "noise", "optimize")
