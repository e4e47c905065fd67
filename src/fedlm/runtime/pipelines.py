"""Build the client and server stage pipelines from a config.

The only place that maps config sections to stages; adding a defence or a codec means
adding a stage here, never an ``if`` inside the training loop.
"""

from __future__ import annotations

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.server_opt import server_optimizer_from_config
from fedlm.aggregation.validate import Validate
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import DecodeStage, EncodeStage
from fedlm.config.schema import ExperimentConfig
from fedlm.stages import CLIENT_ORDER, SERVER_ORDER, Pipeline


def client_pipeline(config: ExperimentConfig) -> Pipeline:
    """Client stages in execution order: clip -> noise -> encode -> mask."""
    stages = [EncodeStage(CODECS.create("fp32"))]
    return Pipeline(stages, order=CLIENT_ORDER, side="client")


def server_pipeline(config: ExperimentConfig, shapes: dict[str, tuple[int, ...]]) -> Pipeline:
    """Server stages in execution order: unmask -> decode -> validate -> aggregate -> noise -> optimize."""
    fed = config.federation
    stages = [
        DecodeStage(CODECS.create("fp32")),
        Validate(shapes, max_norm=fed.max_update_norm, max_bytes=fed.max_update_bytes),
        WeightedMean(weighting=fed.weighting),
        server_optimizer_from_config(config.server_opt),
    ]
    return Pipeline(stages, order=SERVER_ORDER, side="server")


def download_codec(config: ExperimentConfig):
    """Codec of the broadcast global adapter (the downlink)."""
    return CODECS.create("fp32")


INTAKE_KINDS = ("unmask", "decode", "validate")
COMBINE_KINDS = ("aggregate", "noise", "optimize")
