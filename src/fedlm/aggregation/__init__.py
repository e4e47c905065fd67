"""Server stages: the weighted mean, validation, robust aggregators, server optimizers, LoRA-aware merging."""

from fedlm.aggregation.fedavg import WeightedMean, weighted_mean
from fedlm.aggregation.server_opt import SERVER_OPTIMIZERS, server_optimizer_from_config
from fedlm.aggregation.validate import Validate, check_update

__all__ = [
    "SERVER_OPTIMIZERS",
    "Validate",
    "WeightedMean",
    "check_update",
    "server_optimizer_from_config",
    "weighted_mean",
]
