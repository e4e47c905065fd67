"""Who attacks: deterministic choice of malicious clients, and stable attack seeds.

Every choice is a pure function of its inputs, so a resumed or distributed run picks the
same attackers and draws the same malicious noise. Seeds come from SHA-256, never from
Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

from fedlm.errors import ConfigError

# Stands in for the client id when colluding attackers must share their random draws.
COLLUDERS = "<colluders>"


def stable_seed(*parts: object) -> int:
    """A 63-bit non-negative seed from any printable parts (SHA-256 of ``'|'.join``)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def malicious_count(num_clients: int, fraction: float) -> int:
    """``floor(fraction * num_clients)``, with a tiny slack so ``0.3 * 10`` gives 3, not 2."""
    return math.floor(fraction * num_clients + 1e-9)


def select_malicious(
    client_ids: Sequence[str],
    *,
    fraction: float | None = None,
    ids: Sequence[str] | None = None,
    seed: int = 0,
) -> frozenset[str]:
    """The malicious clients: an explicit list, or ``floor(fraction * N)`` drawn with ``seed``.

    The draw sorts the ids first, so it depends on the set of clients and the seed only,
    never on the order the ids were listed in.

    Args:
        client_ids: every client of the federation (N of them, unique).
        fraction: share of clients that attack, in (0, 1).
        ids: explicit malicious ids (each must be in ``client_ids``).
        seed: seed of the draw.

    Returns:
        The malicious ids.

    Raises:
        ConfigError: both or neither of ``fraction``/``ids`` given, an unknown id, or a
            fraction that selects no client.
    """
    everyone = sorted(set(client_ids))
    if len(everyone) != len(client_ids):
        raise ConfigError(
            f"client_ids must be unique, got {len(client_ids)} ids, {len(everyone)} distinct"
        )
    if (fraction is None) == (ids is None):
        raise ConfigError("give exactly one of fraction= or ids= to select malicious clients")
    if ids is not None:
        unknown = sorted(set(ids) - set(everyone))
        if unknown:
            raise ConfigError(
                f"malicious client ids {unknown} are not clients of this federation; "
                f"choose from {everyone[:10]}{' ...' if len(everyone) > 10 else ''}"
            )
        return frozenset(ids)
    if fraction is None or not 0.0 < fraction < 1.0:
        raise ConfigError(f"attack fraction must be in (0, 1), got {fraction!r}")
    k = malicious_count(len(everyone), fraction)
    if k == 0:
        raise ConfigError(
            f"attack fraction {fraction} of {len(everyone)} clients selects no client "
            f"(floor({fraction} * {len(everyone)}) = 0); raise it to at least "
            f"{1 / max(len(everyone), 1):.4g} or list client_ids"
        )
    rng = random.Random(stable_seed("malicious", seed))
    return frozenset(rng.sample(everyone, k))
