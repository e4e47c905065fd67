"""Secure aggregation: SecAgg+ (Bell et al. 2020) over Bonawitz et al. (2017), semi-honest.

Clients and server are transport-free state machines; :func:`run_round` drives them
in process and a Flower runtime can drive the same objects over the network.
"""

from fedlm.privacy.secagg.client import SecAggClient
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.server import AggregateResult, SecAggServer
from fedlm.privacy.secagg.simulate import run_round

__all__ = [
    "AggregateResult",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "run_round",
]
