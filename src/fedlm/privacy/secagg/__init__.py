"""Secure aggregation: SecAgg+ (Bell et al. 2020) over Bonawitz et al. (2017).

Clients and server are transport-free state machines; :func:`run_round` drives them
in process and a Flower runtime can drive the same objects over the network. Clients
with a long-term Ed25519 identity and the enrolment map (:mod:`.identity`) run the
variant that holds against a malicious server: they refuse unsafe round parameters,
verify their neighbours' signed keys and unmask only after Bonawitz et al.'s
consistency check; without one they run the semi-honest protocol and warn.
docs/threat-model.md states what each party is trusted with.
"""

from fedlm.privacy.secagg.client import SecAggClient
from fedlm.privacy.secagg.errors import InsecureSecAggWarning, SecAggAborted, SecAggError
from fedlm.privacy.secagg.identity import enrolment, generate_identity
from fedlm.privacy.secagg.server import AggregateResult, SecAggServer
from fedlm.privacy.secagg.simulate import run_round

__all__ = [
    "AggregateResult",
    "InsecureSecAggWarning",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "enrolment",
    "generate_identity",
    "run_round",
]
