"""Canary clients for the client-level one-run audit inside a training run.

Steinke, Nasr and Jagielski 2023 ("Privacy Auditing with One (1) Training Run") audit a
mechanism from ``m`` canaries, each included with probability 1/2; Andrew et al. 2024
("One-shot Empirical Privacy Estimation for Federated Learning") make the canaries
*clients* of a federated run whose update is a fixed random direction, and score each by
how much the final model moved along it. Here:

* canary ``i`` is included when bit ``i`` of the run's secret stream is set; an included
  canary takes part in a round like any client (Poisson at the clients' rate, from its own
  secret stream) and sends ``C u_i``: ``u_i`` a random unit direction of +-1/sqrt(d)
  entries (near-orthogonal to the others and to real updates in high dimension), ``C`` the
  clip norm, so it is a worst-case-norm client;
* it enters the aggregate through the same mechanism as a client: a separate update before
  the DP mean (central mode: clipped and noised there), or, under secure aggregation, added
  to the secure sum (in the ring: clipped, rotated and conditionally rounded like a
  client's) -- the server-side shortcut for "the canary was one more SecAgg+ participant".
  A canary adds no noise share of its own: the sum's noise is then exactly the real
  clients', the noise the accountant counts, so the audit tests the mechanism as accounted
  (extra shares would only make it look more private);
* its score is ``<theta_T - theta_0, u_i>``, accumulated round by round from the global
  steps (so a checkpoint holds it and resume is exact).

:func:`fedlm.privacy.one_run_audit.one_run_audit` turns scores and inclusion bits into the
empirical lower bound. The canaries are extra clients: they perturb training a little.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.privacy.distributed.mechanism import client_encode
from fedlm.privacy.distributed.stages import DistributedDpRound
from fedlm.privacy.sampling import derived_seed, stream
from fedlm.privacy.secagg.stages import RING_KEY, SUM_CLIENT_ID, flatten, unflatten
from fedlm.stages import CONTRIBUTORS_METRIC, ClientUpdate, CohortValue, RoundPlan, TensorDict

CANARY_PREFIX = "canary:"


class Canaries:
    """The run's canary clients: who is included, who takes part each round, their directions.

    Args:
        key: returns the run's secret key (:mod:`fedlm.privacy.sampling`); called when
            first needed, since a resumed run learns its key from the checkpoint.
        count: ``m``.
        shapes: the shared tensors' shapes, in the flattening order (sorted names).
        norm: the canary update's L2 norm (the clip norm ``C``).
        rate: each included canary's chance to take part in a round.
    """

    def __init__(self, key: Callable[[], bytes], *, count: int, shapes: dict[str, tuple[int, ...]], norm: float,
                 rate: float) -> None:
        self._key, self.count, self.norm, self.rate = key, int(count), float(norm), float(rate)
        self.shapes = {k: tuple(shapes[k]) for k in sorted(shapes)}
        self.dim = sum(math.prod(s) for s in self.shapes.values())

    @property
    def key(self) -> bytes:
        return self._key()

    def included(self) -> np.ndarray:
        """Inclusion bits, shape ``(m,)`` bool (each 1 with probability 1/2, secret)."""
        return (stream(self.key, "audit-include", 0, self.count) & np.uint64(1)).astype(bool)

    def taking_part(self, round_id: int) -> list[int]:
        """Included canaries that take part in round ``round_id``."""
        u = stream(self.key, "audit-sample", round_id, self.count)
        cut = np.uint64(min(int(self.rate * 2.0**64), 2**64 - 1))
        sampled = np.ones(self.count, bool) if self.rate >= 1.0 else u < cut
        return [int(i) for i in np.flatnonzero(self.included() & sampled)]

    def directions(self, idx: list[int] | range) -> np.ndarray:
        """Unit directions of canaries ``idx``, shape ``(len(idx), d)`` float32 (+-1/sqrt(d))."""
        words = (self.dim + 63) // 64
        seed = derived_seed(self.key, "audit-direction")
        out = np.empty((len(idx), self.dim), np.float32)
        for row, i in enumerate(idx):
            raw = np.random.PCG64(np.random.SeedSequence([seed, int(i)])).random_raw(words)
            bits = np.unpackbits(raw.astype("<u8").view(np.uint8), bitorder="little")[: self.dim]
            out[row] = (1.0 - 2.0 * bits.astype(np.float32)) / np.float32(math.sqrt(self.dim))
        return out

    def update(self, i: int) -> TensorDict:
        """Canary ``i``'s update ``C u_i`` by tensor name."""
        return unflatten(self.norm * self.directions([i])[0].astype(np.float64), self.shapes)

    def noise_generator(self, round_id: int, i: int) -> np.random.Generator:
        """The canary's own secret generator (its rounding) in round ``round_id``."""
        return np.random.default_rng(derived_seed(self.key, "audit-noise", round_id, i))

    def score_step(self, step: TensorDict, scores: np.ndarray, *, chunk: int = 32) -> np.ndarray:
        """``scores + U step``: each canary's inner product with one global step, shape ``(m,)``."""
        flat = flatten({k: step[k] for k in self.shapes}, self.shapes).astype(np.float32)  # (d,)
        out = np.array(scores, dtype=np.float64)
        for start in range(0, self.count, chunk):
            idx = range(start, min(start + chunk, self.count))
            out[start : start + len(idx)] += (self.directions(idx) @ flat).astype(np.float64)
        return out


@dataclasses.dataclass(frozen=True)
class CanaryStage:
    """Server stage (kind "validate"): the round's canaries join the valid updates.

    Separate updates (central mode: the DP mean clips them and the noise follows), or added
    to the one secure sum (distributed mode: the clients' shares are its noise). An aborted
    secure round has no sum, and no canary joins it. Metrics: ``canaries`` (how many took part).
    """

    name: ClassVar[str] = "audit_canaries"
    kind: ClassVar[str] = "validate"
    canaries: Canaries
    weight: int = 1

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        part = self.canaries.taking_part(plan.round)
        secure = [u for u in value.updates if u.client_id == SUM_CLIENT_ID]
        if secure:
            total = secure[0]
            tensors = dict(total.tensors or {})
            for i in part:
                add = self.canaries.update(i)
                tensors = {k: tensors[k] + self.weight * add[k].to(tensors[k].dtype) for k in tensors}
            metrics = {**total.metrics, CONTRIBUTORS_METRIC: int(total.metrics.get(CONTRIBUTORS_METRIC, 1)) + len(part)}
            total = replace(total, tensors=tensors, num_examples=total.num_examples + self.weight * len(part),
                            metrics=metrics)
            updates = [total if u is secure[0] else u for u in value.updates]
        elif value.skipped is None and not _ring(value):
            updates = [*value.updates, *(ClientUpdate(client_id=f"{CANARY_PREFIX}{i}", round=plan.round,
                                                      num_examples=self.weight, tensors=self.canaries.update(i))
                                         for i in part)]
        else:
            return state, value, {"canaries": 0}
        return state, replace(value, updates=updates), {"canaries": len(part)}


@dataclasses.dataclass(frozen=True)
class RingCanaryStage:
    """Server stage (kind "unmask", after SecAgg+'s): the round's canaries join the sum in the ring.

    Each encodes ``C u_i`` like a client (clip, rotate, conditional rounding; no noise share,
    see the module docstring) and is added mod ``2^b``. Metrics: ``canaries``.
    """

    name: ClassVar[str] = "audit_canaries_ring"
    kind: ClassVar[str] = "unmask"
    canaries: Canaries

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        ddp = plan.require(DistributedDpRound, by=self.name)
        sums = [u for u in value.updates if u.tensors is not None and set(u.tensors) == {RING_KEY}]
        if not sums:
            return state, value, {"canaries": 0}
        part = self.canaries.taking_part(plan.round)
        params = dataclasses.replace(ddp.params(), noise_stddev=0.0)  # the clients' shares are the noise
        total = sums[0].tensors[RING_KEY].numpy().astype(np.uint64)  # (D,)
        for i in part:
            x = self.canaries.norm * self.canaries.directions([i])[0].astype(np.float64)
            z, _ = client_encode(x, params, rotation_seed=ddp.rotation_seed,
                                 rng=self.canaries.noise_generator(plan.round, i))
            total = (total + z) & np.uint64((1 << ddp.bits) - 1)
        metrics = {**sums[0].metrics, CONTRIBUTORS_METRIC: int(sums[0].metrics.get(CONTRIBUTORS_METRIC, 1)) + len(part)}
        summed = replace(sums[0], tensors={RING_KEY: torch.from_numpy(total.astype(np.int64))},
                         num_examples=sums[0].num_examples + len(part), metrics=metrics)
        updates = [summed if u is sums[0] else u for u in value.updates]
        return state, replace(value, updates=updates), {"canaries": len(part)}


def _ring(value: CohortValue) -> bool:
    return any(u.tensors is not None and RING_KEY in u.tensors for u in value.updates)


__all__ = ["CANARY_PREFIX", "Canaries", "CanaryStage", "RingCanaryStage"]
