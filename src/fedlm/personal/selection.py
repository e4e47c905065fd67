"""Choosing a client's personal model on a validation split of its own training data.

A personal model can serve its client worse than the global one: a client with a few
examples over-fits them, and fine-tuning can drift from what the federation learnt. With
``personal.val_fraction`` each client holds a share of its training examples out of its
personal training, scores the candidates on them and keeps the best:

- ``finetune``: the number of fine-tuning steps, 0 (the global model) to ``personal.steps``
  (early stopping); the personal model is then trained on all the client's examples for the
  chosen count (the count is the hyperparameter the split chose, the data is all of it).
- ``ditto`` and ``mix``: the personal model or the global one.

The split is the client's own and never leaves it, like the rest of its data. The global
model did train on the held-out examples (the federation used them), which makes it look
better than it is on them: that bias leans the choice toward the global model. The split is
drawn from the client's training rows, so it predicts the client's held-out data only as far
as the two look alike; a client whose training rows cover one topic and whose later data
covers others can still pick a personal model that serves it worse.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TypeVar

from fedlm.errors import ConfigError

T = TypeVar("T")


def validation_size(n: int, fraction: float) -> int:
    """Held-out examples of a client with ``n`` training examples: ``ceil(fraction * n)``, at least 1."""
    return max(1, math.ceil(fraction * n))


def require_room(n: int, fraction: float, *, client: str) -> None:
    """Check a client with ``n`` training examples can hold some out and still train.

    Raises:
        ConfigError: it cannot, naming the client and the fix.
    """
    if n - validation_size(n, fraction) < 1:
        raise ConfigError(
            f"client {client!r} has {n} training example(s): personal.val_fraction={fraction} would leave "
            "none to train its personal model on; lower personal.val_fraction, set it to 0, or give the "
            "client more data"
        )


def split_validation(examples: Sequence[T], fraction: float, *, seed: int, client: str) -> tuple[list[T], list[T]]:
    """``(fit, validation)``: a seeded random ``fraction`` of ``examples`` held out, the rest to train on.

    Raises:
        ConfigError: the client has too few examples to hold any out and still train.
    """
    n = len(examples)
    require_room(n, fraction, client=client)
    m = validation_size(n, fraction)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:m])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def best_index(losses: Sequence[float]) -> int:
    """The index of the lowest finite loss; the earliest on ties (fewer steps, or the global model).

    Raises:
        ValueError: no loss is finite.
    """
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        raise ValueError(f"no finite validation loss among {list(losses)}")
    return min(finite)[1]


__all__ = ["best_index", "require_room", "split_validation", "validation_size"]
