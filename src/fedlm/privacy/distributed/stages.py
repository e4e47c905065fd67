"""The distributed discrete Gaussian and Skellam as pipeline stages, over SecAgg+'s integer ring.

Kairouz, Liu and Steinke 2021 (distributed discrete Gaussian) and Agarwal, Kairouz and Liu
2021 (Skellam), as in TFF's ``DistributedDpSumFactory``::

    client: dp_clip -> encode (fp32) -> ddp_encode -> secagg_mask
            (clip; rotate with the public per-round seed; scale by 1/gamma; conditional
             rounding; + the client's discrete noise share; mod 2^b)
    server: secagg (unmask: the sum mod 2^b) -> ddp_decode -> validate -> mean -> optimize
            (centre; times gamma; inverse rotation; / the public denominator in ``mean``)

The round's public parameters travel in the plan's :class:`DistributedDpRound`; each
client's rounding and noise come from its own secret generator (a 128-bit seed from the OS
kept in the stage's state, mixed with the round's seed and the client id). The noise shares
are sized for ``shares`` honest clients, so the sum of any ``shares`` of them has std
``noise_stddev``; the accountant (:mod:`.ledger`) uses the shares that actually reached the
sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from fedlm.errors import PipelineError
from fedlm.privacy.distributed.mechanism import DistributedDpParams, client_encode, server_decode
from fedlm.privacy.secagg.stages import RING_KEY, flatten, layout, unflatten
from fedlm.stages import ClientUpdate, CohortValue, PlanField, RoundPlan


@dataclasses.dataclass(frozen=True)
class DistributedDpRound(PlanField):
    """The public parameters of one round of distributed discrete DP (sent to every client).

    Attributes:
        mechanism: "ddgauss" or "skellam".
        clip: ``c``, the L2 clip norm (update units).
        dim: ``d``, the flattened update's length.
        gamma: granularity, update units per integer step.
        noise_stddev: ``sigma``, std of the noise of ``shares`` summed shares (update units).
        bits: ``b``: the ring ``Z_{2^b}`` (SecAgg+'s modulus).
        beta: conditional rounding parameter.
        shares: ``n``, the honest shares the round's noise is sized for.
        rotation_seed: the public seed of this round's random rotation.
    """

    mechanism: str
    clip: float
    dim: int
    gamma: float
    noise_stddev: float
    bits: int
    beta: float
    shares: int
    rotation_seed: int

    def params(self) -> DistributedDpParams:
        """The mechanism's parameters (validated)."""
        return DistributedDpParams(mechanism=self.mechanism, clip=self.clip, dim=self.dim, num_clients=self.shares,
                                   gamma=self.gamma, noise_stddev=self.noise_stddev, bits=self.bits, beta=self.beta)


def client_generator(secret: int, plan_seed: int, client_id: str) -> np.random.Generator:
    """The client's private generator of a round: ``SeedSequence(secret, round seed, H(id))``."""
    tag = int.from_bytes(hashlib.sha256(client_id.encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([int(secret), int(plan_seed) % 2**64, tag]))


@dataclasses.dataclass(frozen=True)
class DistributedEncodeStage:
    """Client stage (kind "encode", after the fp32 codec): the mechanism's client encoding.

    State: ``{"secret_seed": int}`` (128 bits from the OS, or ``secret_seed`` in a
    reproducible simulation). Metrics: ``norm`` (before clipping), ``clipped``,
    ``rounding_tries``, ``local_scale`` (integer units).
    """

    name: ClassVar[str] = "ddp_encode"
    kind: ClassVar[str] = "encode"
    codec: Any = None
    secret_seed: int | None = None

    def init(self) -> dict[str, int]:
        return {"secret_seed": int(self.secret_seed) if self.secret_seed is not None else secrets.randbits(128)}

    def apply(self, state: dict[str, int], value: ClientUpdate, plan: RoundPlan
              ) -> tuple[dict[str, int], ClientUpdate, dict[str, Any]]:
        ddp = plan.require(DistributedDpRound, by=self.name)
        tensors = value.tensors
        if tensors is None:
            if value.payload is None or self.codec is None:
                raise PipelineError(f"{self.name} got an update with neither tensors nor a decodable payload")
            tensors = self.codec.decode(value.payload)
        x = flatten(tensors, layout(tensors)).astype(np.float64)  # (d,) in sorted-name order
        params = ddp.params()
        rng = client_generator(state["secret_seed"], plan.seed, value.client_id)
        z, metrics = client_encode(x, params, rotation_seed=ddp.rotation_seed, rng=rng)  # (D,) uint64
        ring = {RING_KEY: torch.from_numpy(z.astype(np.int64))}
        return state, replace(value, tensors=ring, payload=None), {**metrics, "local_scale": params.local_scale}


@dataclasses.dataclass(frozen=True)
class DistributedDecodeStage:
    """Server stage (kind "decode"): the secure sum in the ring back to tensors.

    Centres the residues, multiplies by ``gamma``, undoes the rotation and keeps the first
    ``d`` values: ``sum_i clip(x_i) + noise + rounding`` by tensor name (the sum; the mean
    stage divides it by the public denominator). Metrics: ``peak`` (the largest centred
    coordinate over ``2^(b-1)``: near 1 a wrap-around is close).
    """

    name: ClassVar[str] = "ddp_decode"
    kind: ClassVar[str] = "decode"
    shapes: dict[str, tuple[int, ...]]

    def init(self) -> None:
        return None

    def apply(self, state: None, value: CohortValue, plan: RoundPlan) -> tuple[None, CohortValue, dict[str, Any]]:
        ddp = plan.require(DistributedDpRound, by=self.name)
        params = ddp.params()
        out, peak = [], 0.0
        for u in value.updates:
            if u.tensors is None or set(u.tensors) != {RING_KEY}:
                raise PipelineError(f"{self.name} needs the secure sum in the ring; secure aggregation must unmask it")
            total = u.tensors[RING_KEY].numpy().astype(np.uint64)  # (D,)
            half = 1 << (ddp.bits - 1)
            centred = total.astype(np.int64)
            centred = np.where(centred >= half, centred - (1 << ddp.bits), centred)
            peak = max(peak, float(np.abs(centred).max(initial=0)) / half)
            summed = server_decode(total, params, rotation_seed=ddp.rotation_seed)  # (d,) float64
            out.append(replace(u, tensors=unflatten(summed, layout(self.shapes))))
        return state, replace(value, updates=out), {"peak": peak, "gamma": ddp.gamma}


def honest_shares(cohort_size: int, min_honest_fraction: float) -> int:
    """``ceil(f k)``: the shares a round of ``k`` clients is sized for (at least 1)."""
    return max(1, int(np.ceil(min_honest_fraction * cohort_size - 1e-9)))


def honest_survivors(survivors: int, cohort_size: int, min_honest_fraction: float) -> int:
    """Shares that provably reached the sum: the survivors, less the ``floor((1 - f) k)``
    clients that may be dishonest (their shares the server may know or they may withhold)."""
    return max(0, int(survivors) - int(np.floor((1.0 - min_honest_fraction) * cohort_size + 1e-9)))


__all__ = [
    "DistributedDecodeStage",
    "DistributedDpRound",
    "DistributedEncodeStage",
    "client_generator",
    "honest_shares",
    "honest_survivors",
]
