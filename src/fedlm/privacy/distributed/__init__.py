"""Distributed DP over secure aggregation: the distributed discrete Gaussian and Skellam.

Kairouz, Liu and Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation"; Agarwal, Kairouz and Liu 2021, "The Skellam Mechanism
for Differentially Private Federated Learning"; as in TFF's ``DistributedDpSumFactory``.
One concept per module:

* :mod:`.rotation`: the shared randomised Hadamard rotation (public per-round seed);
* :mod:`.rounding`: conditional randomised rounding and the sensitivity it guarantees;
* :mod:`.discrete_noise`: discrete Gaussian and Skellam samplers;
* :mod:`.accounting`: RDP of one round, composition, Poisson subsampling, calibration;
* :mod:`.mechanism`: the public parameters, client encoding and server decoding;
* :mod:`.calibration`: the wrap-around bound and the choice of ``(gamma, bits, sigma)``;
* :mod:`.ledger`: a run's rounds at the shares that reached each sum, and their epsilon;
* :mod:`.stages`: the client encoding and server decoding as pipeline stages over SecAgg+.

Pure functions on NumPy arrays with explicit generators; only :mod:`.stages` imports
torch (it is not imported here).
"""

from fedlm.privacy.distributed.accounting import (
    MECHANISMS,
    RDP_ORDERS,
    calibrate_noise_stddev,
    distributed_epsilon,
    rdp_to_epsilon,
    round_rdp,
)
from fedlm.privacy.distributed.calibration import (
    distributed_dp_params,
    min_bits,
    wraparound_probability,
)
from fedlm.privacy.distributed.mechanism import (
    DistributedDpParams,
    centre,
    client_encode,
    modular_sum,
    server_decode,
)

__all__ = [
    "MECHANISMS",
    "RDP_ORDERS",
    "DistributedDpParams",
    "calibrate_noise_stddev",
    "centre",
    "client_encode",
    "distributed_dp_params",
    "distributed_epsilon",
    "min_bits",
    "modular_sum",
    "rdp_to_epsilon",
    "round_rdp",
    "server_decode",
    "wraparound_probability",
]
