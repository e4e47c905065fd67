"""Seeds derived from integers: every random choice in fedlm comes from one of these."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across processes and platforms, unlike ``hash``).

    Runs derive per-round and per-client seeds as ``derive_seed(seed, round, index)``, so
    a resumed run draws exactly what an uninterrupted one would.
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


__all__ = ["derive_seed"]
