"""Build the client and server stage pipelines from a config.

The only place that maps config sections to stages; adding a defence or a codec means
adding a stage here, never an ``if`` inside the training loop.
"""

from __future__ import annotations

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.robust_stages import build_robust_stage
from fedlm.aggregation.server_opt import server_optimizer_from_config
from fedlm.aggregation.validate import Validate
from fedlm.attacks import attack_stages
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import DecodeStage, EncodeStage
from fedlm.config.schema import ExperimentConfig
from fedlm.runtime import hetero_run, personal_run, secagg_round
from fedlm.runtime.privacy_run import DpRun
from fedlm.stages import CLIENT_ORDER, SERVER_ORDER, Pipeline, TensorDict


def client_pipeline(config: ExperimentConfig, client_ids: list[str], *, dp: DpRun | None = None) -> Pipeline:
    """Client stages in execution order: transform -> clip -> noise -> encode -> mask.

    ``transform`` stages are the attack suite's update attacks (off by default); they
    act only on the malicious clients chosen from ``client_ids``. ``dp`` adds DP-FedAvg's
    clip and (distributed mode) noise-share stages.
    """
    comp = config.compression
    stages: list = attack_stages(config.attack, client_ids, server_lr=config.server_opt.lr or 1.0)
    stages.extend(dp.client_stages if dp is not None else [])
    stages.append(EncodeStage(_codec(config, "upload"), error_feedback=comp.error_feedback))
    if config.secure_aggregation.enabled:  # norm-bound clip before encode, SecAgg+ mask last
        stages = secagg_round.client_stages(config, stages, codec=_codec(config, "upload"))
    return Pipeline(stages, order=CLIENT_ORDER, side="client")


def server_pipeline(
    config: ExperimentConfig, shapes: dict[str, tuple[int, ...]], *, dp: DpRun | None = None,
    frozen: TensorDict | None = None,
) -> Pipeline:
    """Server stages in execution order: unmask -> decode -> validate -> aggregate -> noise -> optimize.

    With client-level DP, ``dp`` replaces the mean by the bounded-sensitivity DP mean and
    adds the central noise and adaptive-clipping stages. ``frozen`` are the LoRA tensors
    outside the trainable state (FFA-LoRA's A), which the LoRA stage needs to log its error.
    """
    fed = config.federation
    shapes = personal_run.shared_shapes(config, shapes)  # personal modules never reach the server
    dp_stages = dp.server_stages if dp is not None else []
    stages = [
        DecodeStage(_codec(config, "upload")),
        Validate(shapes, max_norm=fed.max_update_norm, max_bytes=fed.max_update_bytes),
        *hetero_run.with_after_mean(config, dp_stages or [  # robust, FedNova or LoRA-aware, else FedAvg's mean
            build_robust_stage(config.robust) or personal_run.mean_stage(config)  # q-FFL, personal modules
            or hetero_run.mean_stage(config, shapes, frozen) or WeightedMean(weighting=fed.weighting)
        ]),
        server_optimizer_from_config(config.server_opt),
    ]
    if config.secure_aggregation.enabled:  # the server sees only the unmasked sum
        stages = secagg_round.server_stages(config, stages, shapes=shapes)
    return Pipeline(stages, order=SERVER_ORDER, side="server")


def download_codec(config: ExperimentConfig):
    """Codec of the broadcast global adapter (the downlink)."""
    return _codec(config, "download")


def _codec(config: ExperimentConfig, direction: str):
    name, params = config.compression.codec_spec(direction)  # type: ignore[arg-type]
    return CODECS.create(name, **params)


INTAKE_KINDS = ("unmask", "decode", "validate")
COMBINE_KINDS = ("aggregate", "noise", "optimize")
