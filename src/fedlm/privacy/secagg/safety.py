"""What a client checks in the server's Setup before it makes a single key.

A client must not take the round's parameters on the server's word: a server that sends a
threshold of 2, or a sparse graph, can then collect both shares of one client's secrets
and unmask its input (see :mod:`fedlm.privacy.secagg.graph`). So each client derives from
its *own* config (``secure_aggregation``: ``corrupt_fraction``, ``neighbours``) the degree
and threshold it considers safe and refuses a Setup below them (reason ``"unsafe"``), as
the active-security analysis of Bonawitz et al. (2017, Sec. 6) and its per-neighbourhood
form in Bell et al. (2020) require. With its config it also refuses quantisation settings
other than its own (reason ``"bad_params"``), so the server cannot change the clip range,
the levels or the weight cap a client signed up for.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from fedlm.config.secagg import SecAggConfig
from fedlm.privacy.secagg import identity as auth
from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.graph import harary_neighbours, min_safe_threshold, required_degree
from fedlm.privacy.secagg.messages import Setup
from fedlm.privacy.secagg.quantize import required_modulus_bits


def check_setup(
    setup: Setup, *, me: str, config: SecAggConfig, match_config: bool
) -> dict[str, frozenset[str]]:
    """Validate a Setup against this client's config; return the round's neighbour graph.

    Args:
        setup: the server's round parameters.
        me: this client's id.
        config: this client's own secure-aggregation settings.
        match_config: also require bits, modulus_bits, clip_range and max_weight to equal
            the config's (True when the client was given its config).

    Raises:
        SecAggError: ``not_member``, ``bad_params`` or ``unsafe``, naming the field, the
            value the server sent and the client's bound.
    """
    n = len(setup.cohort)
    if me not in setup.cohort or len(set(setup.cohort)) != n:
        raise SecAggError("not_member", f"{me!r} is not (uniquely) in the round's cohort")
    if n < 3:
        raise SecAggError("bad_params", f"a cohort of {n} cannot run SecAgg+ (needs >= 3)")
    _check_encoding(setup, config=config, match_config=match_config)
    need_k = required_degree(n, neighbours=config.neighbours)
    if setup.degree < need_k:
        raise SecAggError(
            "unsafe",
            f"degree={setup.degree} is below {need_k}, the degree this client's config requires "
            f"for a cohort of {n} (secure_aggregation.neighbours={config.neighbours})",
        )
    graph = harary_neighbours(setup.cohort, degree=setup.degree, seed=setup.graph_seed)
    k = min(len(v) for v in graph.values())
    need_t = max(2, min_safe_threshold(k, corrupt_fraction=config.corrupt_fraction))
    if setup.threshold < need_t:
        raise SecAggError(
            "unsafe",
            f"threshold={setup.threshold} is below {need_t}, the smallest safe threshold for "
            f"degree {k} at secure_aggregation.corrupt_fraction={config.corrupt_fraction} "
            "(2t > k + corrupt neighbours); a server that lies about dropouts could unmask a client",
        )
    if setup.threshold > k:
        raise SecAggError("bad_params", f"threshold={setup.threshold} exceeds the degree {k}")
    return graph


def _check_encoding(setup: Setup, *, config: SecAggConfig, match_config: bool) -> None:
    """Quantisation settings: sane, matching the client's config, with headroom for the sum."""
    if setup.vector_len < 1 or setup.max_weight < 1:
        raise SecAggError(
            "bad_params", f"vector_len={setup.vector_len}, max_weight={setup.max_weight} must be >= 1"
        )
    if not (1 <= setup.bits <= 32 and 2 <= setup.modulus_bits <= 64):
        raise SecAggError(
            "bad_params", f"bits={setup.bits} or modulus_bits={setup.modulus_bits} out of range"
        )
    if not (math.isfinite(setup.clip) and setup.clip > 0):
        raise SecAggError("bad_params", f"clip={setup.clip} must be a positive finite number")
    if match_config:
        mine = {
            "bits": config.bits,
            "modulus_bits": config.modulus_bits,
            "clip_range": config.clip_range,
            "max_weight": config.max_weight,
        }
        sent = {
            "bits": setup.bits,
            "modulus_bits": setup.modulus_bits,
            "clip_range": setup.clip,
            "max_weight": setup.max_weight,
        }
        for name, value in sent.items():
            if value != mine[name]:
                raise SecAggError(
                    "bad_params",
                    f"the server sent {name}={value}, this client's secure_aggregation.{name} is "
                    f"{mine[name]}; both sides must run the same config",
                )
    n = len(setup.cohort)
    need = required_modulus_bits(n, bits=setup.bits, max_weight=setup.max_weight)
    if need > setup.modulus_bits:
        raise SecAggError(
            "bad_params",
            f"modulus_bits={setup.modulus_bits} < {need} needed for n={n} without overflow",
        )


def count_signers(
    signatures: Iterable[tuple[str, bytes]],
    *,
    eligible: Collection[str],
    known: Mapping[str, bytes],
    payload: bytes,
    enough: int,
) -> int:
    """Distinct eligible signers with a valid signature over ``payload``, counted up to ``enough``.

    Bonawitz et al. (2017), Fig. 4, ConsistencyCheck: a client unmasks only when at least t
    of its neighbours in U3 signed the same U3. A signature of an ineligible signer (not a
    neighbour, not a survivor, the client itself), a repeated signer or a signature that
    does not verify against the enrolled key counts for nothing; counting stops at
    ``enough``, so a long forged list costs no more than t verifications plus the failures.
    """
    valid: set[str] = set()
    tried: set[str] = set()  # one verification per signer, however long the list
    for cid, sig in signatures:
        if len(valid) >= enough:
            break
        if cid in eligible and cid not in tried:
            tried.add(cid)
            if auth.verify(known.get(cid), sig, payload):
                valid.add(cid)
    return len(valid)


__all__ = ["check_setup", "count_signers"]
