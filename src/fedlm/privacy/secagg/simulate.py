"""In-process driver of one SecAgg+ round: pumps messages between clients and server.

Every message is encoded to bytes and decoded again on the way, so the byte counts
are exact and the codec is exercised exactly as a runtime would. Dropouts are injected
by withholding a client's upload of a given phase.

Phase bookkeeping in the stats: phase p covers the server's message that starts it,
the clients' uploads of p and the server's processing of them:

==================  =================  ===============  =====================
phase               down (per client)  up               server work
==================  =================  ===============  =====================
``advertise_keys``  Setup              AdvertiseKeys    route public keys
``share_keys``      NeighbourKeys      ShareKeys        route ciphertexts
``masked_input``    ForwardedShares    MaskedInput      collect vectors
``unmasking``       UnmaskRequest      UnmaskShares     reconstruct, unmask, sum
==================  =================  ===============  =====================
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.client import SecAggClient
from fedlm.privacy.secagg.errors import SecAggAborted, SecAggError
from fedlm.privacy.secagg.messages import Message, decode
from fedlm.privacy.secagg.server import PHASES, SecAggServer


def run_round(
    vectors: Mapping[str, np.ndarray],
    *,
    config: SecAggConfig,
    weights: Mapping[str, int] | None = None,
    dropouts: Mapping[str, Collection[str]] | None = None,
    round_id: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run one secure-aggregation round over in-process clients.

    Args:
        vectors: client id -> float array of shape (L,); the dict order is the cohort order.
        config: protocol settings; ``dropout_rate`` adds random dropouts (each client
            drops with that probability, at a phase drawn uniformly) and ``seed`` makes
            the graph, the dropouts and the rounding noise reproducible.
        weights: client id -> integer weight in [1, config.max_weight]; default 1 each.
        dropouts: phase name -> ids that go silent before sending that phase's upload
            (e.g. ``{"masked_input": {"c3"}}`` drops c3 after it shared its keys).
        round_id: binds keys and ciphertexts to this round.

    Returns:
        (sum, stats): the decoded weighted sum of the survivors' vectors, float64 of
        shape (L,), and a dict with ``cohort_size``, ``survivors`` (count),
        ``survivor_ids`` (whose inputs are in the sum), ``degree``,
        ``threshold``, ``total_weight``, ``upload_expansion`` (masked-input bytes per
        client over 4 L) and ``phases``: phase -> ``dropouts``, ``bytes_up``,
        ``bytes_down``, ``client_seconds`` (sum over clients), ``client_seconds_max``,
        ``server_seconds``; plus ``client_errors`` (client, phase, reason).

    Raises:
        SecAggAborted: too many dropouts (or a split survivor graph); ``.stats`` holds
            the figures up to the abort and no sum is computed.
    """
    cohort = tuple(vectors)
    shapes = {np.shape(v) for v in vectors.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ConfigError(
            f"every vector must be 1-D with the same length, got shapes {sorted(shapes)}"
        )
    vector_len = next(iter(shapes))[0]
    weights = dict(weights or {})
    unknown = set(dropouts or {}) - set(PHASES)
    if unknown:
        raise ConfigError(f"dropout phases {sorted(unknown)} are not in {list(PHASES)}")
    rng = np.random.default_rng(config.seed)
    drop_at = {p: set((dropouts or {}).get(p, ())) for p in PHASES}
    for cid in cohort:  # random dropouts: one draw per client, at a uniform phase
        if rng.random() < config.dropout_rate:
            drop_at[PHASES[rng.integers(len(PHASES))]].add(cid)
    seeded = config.seed is not None
    server = SecAggServer(
        cohort,
        vector_len=vector_len,
        config=config,
        round_id=round_id,
        graph_seed=int(rng.integers(2**63)) if seeded else None,
    )
    clients = {
        cid: SecAggClient(cid, rng=np.random.default_rng([config.seed, i]) if seeded else None)
        for i, cid in enumerate(cohort)
    }
    stats: dict[str, Any] = {
        "cohort_size": len(cohort),
        "degree": server.degree,
        "threshold": server.threshold,
        "modulus_bits": config.modulus_bits,
        "bits": config.bits,
        "phases": {},
        "client_errors": [],
    }
    handlers = {
        "advertise_keys": lambda c, m: c.advertise_keys(m),
        "share_keys": lambda c, m: c.share_keys(m),
        "masked_input": lambda c, m: c.masked_input(
            m, vectors[c.client_id], weight=weights.get(c.client_id, 1)
        ),
        "unmasking": lambda c, m: c.unmask(m),
    }
    steps = {
        "advertise_keys": server.advertise_keys,
        "share_keys": server.share_keys,
        "masked_input": server.masked_input,
        "unmasking": server.unmask,
    }

    t0 = time.perf_counter()
    down: Any = server.setup()
    setup_seconds = time.perf_counter() - t0
    result = None
    try:
        for phase in PHASES:
            ph = stats["phases"][phase] = {
                "bytes_down": 0,
                "bytes_up": 0,
                "client_seconds": 0.0,
                "client_seconds_max": 0.0,
                "server_seconds": setup_seconds if phase == "advertise_keys" else 0.0,
                "dropouts": 0,
            }
            uploads = []
            for cid, msg in down.items():
                received = _wire(msg, ph, "bytes_down")
                if cid in drop_at[phase]:
                    continue
                t0 = time.perf_counter()
                try:
                    reply = handlers[phase](clients[cid], received)
                except SecAggError as exc:  # the client refuses or aborts: it is a dropout
                    stats["client_errors"].append((cid, phase, exc.reason))
                    continue
                finally:
                    spent = time.perf_counter() - t0
                    ph["client_seconds"] += spent
                    ph["client_seconds_max"] = max(ph["client_seconds_max"], spent)
                uploads.append(_wire(reply, ph, "bytes_up"))
                if phase == "masked_input":
                    stats["upload_expansion"] = len(reply.to_bytes()) / (4.0 * vector_len)
            t0 = time.perf_counter()
            try:
                down = steps[phase](uploads)
            finally:
                ph["server_seconds"] += time.perf_counter() - t0
                ph["dropouts"] = len(server.dropped[phase])
            if phase == "unmasking":
                result = down
    except SecAggAborted as exc:
        stats["survivors"] = 0
        exc.stats = stats
        raise
    stats["survivors"] = len(result.survivors)
    stats["survivor_ids"] = list(result.survivors)
    stats["total_weight"] = result.total_weight
    return result.values, stats


def _wire(msg: Message, ph: dict[str, Any], key: str) -> Message:
    """Encode, count and decode one message, as a transport would."""
    data = msg.to_bytes()
    ph[key] += len(data)
    return decode(data)


__all__ = ["run_round"]
