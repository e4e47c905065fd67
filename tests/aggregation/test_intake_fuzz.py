"""Fuzzing the server's intake (decode -> validate -> mean) with 10,000 hostile uploads.

Each case is one payload from a cohort member, random bytes or a mutation of a valid
upload (bit flips, truncation, spliced tails, wrong client, wrong round, huge
declared sizes). The properties, for every case:

* the server never raises: a bad upload becomes a rejection, never an exception;
* every rejection carries a named reason (a snake_case word) and a detail for the user;
* the global model is never corrupted: the aggregate is finite, has the model's shapes,
  and equals the exact mean of the updates that were accepted.
"""

from __future__ import annotations

import re

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlm.aggregation.fedavg import WeightedMean, weighted_mean
from fedlm.aggregation.validate import Validate
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import DecodeStage
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

SHAPES = {"layers.0.q_proj.lora_A": (2, 4), "layers.0.q_proj.lora_B": (4, 2)}
COHORT = tuple(f"c{i}" for i in range(12))
PLAN = RoundPlan(round=3, cohort=COHORT, lr=0.1, local_steps=1, seed=0)
CODEC_SPECS = {"fp32": {}, "int8": {"block_size": 4}, "topk": {"fraction": 0.5}}
CASES_PER_EXAMPLE = 10
EXAMPLES = 1_000  # x CASES_PER_EXAMPLE = 10,000 hostile uploads
REASON = re.compile(r"^[a-z][a-z0-9_]*$")


def honest(codec_name: str, seed: int) -> bytes:
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(s, generator=gen) * 0.1 for k, s in SHAPES.items()}
    return CODECS.create(codec_name, **CODEC_SPECS[codec_name]).encode(tensors, generator=gen)


VALID = {name: [honest(name, s) for s in range(3)] for name in CODEC_SPECS}


@st.composite
def hostile(draw: st.DrawFn, codec_name: str) -> tuple[str, int, bytes]:
    """(client id, round, payload) of one hostile upload."""
    base = draw(st.sampled_from(VALID[codec_name]))
    kind = draw(st.sampled_from(["random", "flip", "truncate", "splice", "extend", "header"]))
    if kind == "random":
        payload = draw(st.binary(max_size=400))
    elif kind == "flip":
        buf = bytearray(base)
        for _ in range(draw(st.integers(1, 6))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        payload = bytes(buf)
    elif kind == "truncate":
        payload = base[: draw(st.integers(0, len(base) - 1))]
    elif kind == "splice":
        other = draw(st.sampled_from([p for ps in VALID.values() for p in ps]))
        cut = draw(st.integers(0, min(len(base), len(other)) - 1))
        payload = base[:cut] + other[cut:]
    elif kind == "extend":
        payload = base + draw(st.binary(min_size=1, max_size=64))
    else:  # a hostile 8-byte header length (safetensors' first field)
        payload = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little") + base[8:]
    client = draw(st.sampled_from([*COHORT[2:], "outsider"]))
    rnd = draw(st.sampled_from([PLAN.round, PLAN.round, PLAN.round, 2, -1]))
    return client, rnd, payload


def _intake_case(codec_name: str, fuzzed: list[tuple[str, int, bytes]], seen: dict[str, int]) -> None:
    codec = CODECS.create(codec_name, **CODEC_SPECS[codec_name])
    good = [ClientUpdate(cid, PLAN.round, 5, payload=VALID[codec_name][i]) for i, cid in enumerate(COHORT[:2])]
    bad = [ClientUpdate(cid, rnd, 3, payload=p) for cid, rnd, p in fuzzed]
    value = CohortValue(updates=good + bad)
    for stage in (DecodeStage(codec, max_numel=10_000), Validate(SHAPES, max_norm=1e6, max_bytes=4096)):
        _, value, _ = stage.apply(stage.init(), value, PLAN)
    _, value, _ = WeightedMean().apply(None, value, PLAN)

    for r in value.rejected:
        assert REASON.match(r["reason"]), r
        assert r["detail"], r
        seen[r["reason"]] = seen.get(r["reason"], 0) + 1
    accepted = {u.client_id for u in value.updates}
    assert {"c0", "c1"} <= accepted  # honest uploads always survive
    assert len(value.updates) + len(value.rejected) == len(good) + len(bad)
    expected = weighted_mean([u.tensors for u in value.updates], [u.num_examples for u in value.updates])
    for name, shape in SHAPES.items():
        agg = value.aggregate[name]
        assert tuple(agg.shape) == shape and bool(torch.isfinite(agg).all())
        assert torch.equal(agg, expected[name])


def test_ten_thousand_hostile_uploads_never_crash_or_corrupt_the_server() -> None:
    seen: dict[str, int] = {}
    cases = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def one(data: st.DataObject) -> None:
        nonlocal cases
        codec_name = data.draw(st.sampled_from(sorted(CODEC_SPECS)))
        fuzzed = data.draw(st.lists(hostile(codec_name), min_size=CASES_PER_EXAMPLE, max_size=CASES_PER_EXAMPLE))
        _intake_case(codec_name, fuzzed, seen)
        cases += len(fuzzed)

    one()
    assert cases >= 10_000
    # the fuzzer reached the decoder's and the validator's checks, not just one of them
    assert {"malformed", "not_in_cohort", "wrong_round"} <= set(seen), seen
