"""Fuzzing the server's intake (decode -> validate -> norm guard -> mean) with 10,000 hostile uploads.

Each round has five honest clients and four hostile uploads: a mutation of a valid
payload of the round's codec (every registered codec takes turns; see
``tests/compression/payload_mutations.py``), random bytes, a valid payload scaled up to
1e30, a wrong client, round or example count, or a payload over the byte limit. The
stages are configured as the default config builds them: no ``max_update_norm``, so the
norm guard is what stands between a blown-up update and the global model. The
properties, for every round:

* the server never raises: a bad upload becomes a rejection, never an exception;
* every rejection carries a named reason (a snake_case word) and a detail for the user;
* honest updates always survive (they are a majority, so the guard's median is honest);
* the global model is never corrupted: the aggregate is finite, has the model's shapes,
  and equals the exact weighted mean of the updates that were accepted.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "compression"))  # the shared mutators

from payload_mutations import SHAPES, VARIANTS, Mutator, codec, honest_payload, honest_update

from fedlm.aggregation.fedavg import WeightedMean, weighted_mean
from fedlm.aggregation.norm_guard import NormGuard, aggregate_is_finite
from fedlm.aggregation.validate import Validate
from fedlm.compression.stages import DecodeStage, derive_generator
from fedlm.errors import UpdateRejected
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

HONEST = tuple(f"h{i}" for i in range(5))
HOSTILE = tuple(f"x{i}" for i in range(4))
PLAN = RoundPlan(round=3, cohort=HONEST + HOSTILE, lr=0.1, local_steps=1, seed=0)
ROUNDS = 2_500  # x 4 hostile uploads = 10,000
SMOKE_ROUNDS = 60
SEED = 7_031
REASON = re.compile(r"^[a-z][a-z0-9_]*$")
WEIGHTS = [3, 3, 3, 3, 3, 1, 0, -2, 2**63, 10**30, True]
SCALES = [1e30, 1e6, 40.0, 4.0]  # honest norms are ~2.5: 4x passes the guard, 40x does not


def scaled(variant: str, seed: int) -> list[bytes]:
    """Valid payloads of blown-up updates (those the codec can represent)."""
    out = []
    for s in SCALES:
        big = {k: v * s for k, v in honest_update(seed).items()}
        with contextlib.suppress(UpdateRejected):  # fp16 overflow, fixed-scale range: unsendable
            out.append(codec(variant).encode(big, generator=derive_generator(seed, "scaled")))
    return out


class Intake:
    """One variant's server stages and hostile-upload source."""

    def __init__(self, variant: str, rng: random.Random) -> None:
        self.rng = rng
        self.honest = [honest_payload(variant, seed) for seed in range(len(HONEST))]
        foreign = [honest_payload(v, 9) for v in VARIANTS if VARIANTS[v] != VARIANTS[variant]]
        self.scaled = scaled(variant, 11)
        self.mutate = Mutator(rng, self.honest, foreign)
        self.max_bytes = max(len(p) for p in self.honest) + 64
        upload = codec(variant)
        self.stages = [
            DecodeStage(upload, shapes=SHAPES, max_bytes=self.max_bytes),
            Validate(SHAPES, max_norm=None, max_bytes=self.max_bytes),
            NormGuard(),
            WeightedMean(),
        ]

    def hostile(self, client_id: str) -> ClientUpdate:
        r = self.rng
        kind = r.choices(["mutation", "scaled", "identity", "oversize"], [6, 2, 1, 1])[0]
        payload = r.choice(self.honest)
        if kind == "mutation":
            payload = self.mutate()[1]
        elif kind == "scaled" and self.scaled:
            payload = r.choice(self.scaled)
        elif kind == "identity":
            client_id = r.choice([client_id, "outsider", HONEST[0]])
        elif kind == "oversize":
            payload = payload + bytes(self.max_bytes)
        rnd = r.choice([PLAN.round] * 4 + [2, -1])
        return ClientUpdate(client_id, rnd, r.choice(WEIGHTS), payload=payload)

    def round(self, seen: Counter[str]) -> None:
        good = [ClientUpdate(cid, PLAN.round, 5, payload=p) for cid, p in zip(HONEST, self.honest)]
        bad = [self.hostile(cid) for cid in HOSTILE]
        value = CohortValue(updates=good + bad)
        for stage in self.stages:
            _, value, _ = stage.apply(stage.init(), value, PLAN)

        for r in value.rejected:
            assert REASON.match(r["reason"]) and r["detail"], r
            assert r["reason"] != "decode_error", r
            seen[r["reason"]] += 1
        accepted = [u.client_id for u in value.updates]
        assert set(HONEST) <= set(accepted), value.rejected
        assert len(value.updates) + len(value.rejected) == len(good) + len(bad)
        expected = weighted_mean([u.tensors for u in value.updates], [u.num_examples for u in value.updates])
        assert aggregate_is_finite(value.aggregate)
        for name, shape in SHAPES.items():
            assert tuple(value.aggregate[name].shape) == shape
            assert torch.equal(value.aggregate[name], expected[name])


def run(rounds: int) -> Counter[str]:
    rng = random.Random(SEED)
    intakes = {v: Intake(v, rng) for v in sorted(VARIANTS)}
    seen: Counter[str] = Counter()
    for i in range(rounds):
        intakes[sorted(VARIANTS)[i % len(VARIANTS)]].round(seen)
    return seen


@pytest.mark.fuzz
def test_ten_thousand_hostile_uploads_never_crash_or_corrupt_the_server() -> None:
    seen = run(ROUNDS)
    assert ROUNDS * len(HOSTILE) >= 10_000
    # the fuzzer reached the decoder's, the validator's and the guard's checks
    expected = {"malformed", "too_large", "not_in_cohort", "wrong_round", "bad_weight", "duplicate", "norm_outlier"}
    assert expected <= set(seen), seen


def test_intake_fuzz_smoke() -> None:
    """A slice of the intake fuzz for every run (the full one is marked ``fuzz``)."""
    assert "malformed" in run(SMOKE_ROUNDS)
