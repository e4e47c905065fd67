"""In-process driver of one SecAgg+ round: every client masks a given vector.

A thin loop over :class:`~fedlm.privacy.secagg.session.SecAggSession` (which encodes and
decodes every message, so byte counts are exact, and gives every client a fresh identity
key, so the round signs its keys and runs the consistency check); see that module for
what each phase's figures cover.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from fedlm.config.secagg import SecAggConfig
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.session import SecAggSession


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
        ``server_seconds``; plus ``client_errors`` (client, phase, reason), ``rejected``
        (sender, reason) and ``authenticated``.

    Raises:
        SecAggAborted: too many dropouts (or a split survivor graph); ``.stats`` holds
            the figures up to the abort and no sum is computed.
    """
    shapes = {np.shape(v) for v in vectors.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ConfigError(
            f"every vector must be 1-D with the same length, got shapes {sorted(shapes)}"
        )
    weights = dict(weights or {})
    session = SecAggSession(
        tuple(vectors),
        vector_len=next(iter(shapes))[0],
        config=config,
        round_id=round_id,
        seed=config.seed,
        dropouts=dropouts,
    )
    session.start()
    uploads = [
        session.mask(cid, vec, weight=weights.get(cid, 1))
        for cid, vec in vectors.items()
        if session.will_upload(cid)
    ]
    result = session.finish(u for u in uploads if u is not None)
    return result.values, session.stats


__all__ = ["run_round"]
