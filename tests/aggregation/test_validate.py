"""Validate: hostile identities and weights, the byte limit across decode and validate.

The per-reason table of ``check_update`` is in test_fedavg.py; this file covers what
the intake review added: values a client controls that used to crash or skew the server.
"""

from __future__ import annotations

import pytest
import torch

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.norm_guard import NormGuard
from fedlm.aggregation.validate import Validate, check_update
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import DecodeStage
from fedlm.errors import UpdateRejected
from fedlm.stages import SERVER_ORDER, ClientUpdate, CohortValue, Pipeline, RoundPlan

PLAN = RoundPlan(round=2, cohort=("a", "b", "c"), lr=0.1, local_steps=1, seed=0)
SHAPES = {"w": (2,)}


def update(cid: object = "a", n: object = 4, w: tuple[float, float] = (3.0, 4.0)) -> ClientUpdate:
    return ClientUpdate(cid, 2, n, tensors={"w": torch.tensor(w)})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (update(n=True), "bad_weight"),  # a bool is an int in Python, not a count
        (update(n=2**63), "bad_weight"),  # past int64: would overflow the mean's float
        (update(n=10**400), "bad_weight"),
        (update(n=2.0), "bad_weight"),
        (update(cid=["a"]), "bad_client"),  # unhashable: used to raise TypeError
        (update(cid=None), "bad_client"),
        (ClientUpdate("a", 2, 1, tensors={"w": torch.tensor([1.0, float("inf")])}), "non_finite"),
    ],
)
def test_hostile_fields_are_rejections_not_crashes(hostile: ClientUpdate, reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        check_update(hostile, PLAN, shapes=SHAPES)
    assert info.value.reason == reason
    value = CohortValue([hostile, update("b")])
    _, out, metrics = Validate(SHAPES).apply(None, value, PLAN)
    assert [u.client_id for u in out.updates] == ["b"] and out.rejected[0]["reason"] == reason
    assert metrics["accepted"] == 1 and metrics["norms"] == {"b": 5.0}
    assert len(value.updates) == 2 and value.rejected == []  # the input is not mutated


def test_the_largest_int64_weight_is_accepted() -> None:
    assert check_update(update(n=2**63 - 1), PLAN, shapes=SHAPES) == 5.0


def test_max_update_bytes_holds_through_decode_and_validate() -> None:
    # The review's case: federation.max_update_bytes=1000 and a 15,640-byte update got in,
    # because decode dropped the payload before Validate could measure it.
    codec = CODECS.create("fp32")
    shapes = {"w": (3864,)}
    big = codec.encode({"w": torch.full((3864,), 1e-3)})
    assert len(big) == 15_640
    limit = 1_000
    intake = Pipeline(
        [DecodeStage(codec, shapes=shapes, max_bytes=limit), Validate(shapes, max_bytes=limit), NormGuard()],
        order=SERVER_ORDER,
        side="server",
    )
    value = CohortValue([ClientUpdate("a", 2, 1, payload=big)])
    _, out, metrics = intake.apply(intake.init(), value, PLAN)
    assert out.updates == [] and [(r["client_id"], r["reason"]) for r in out.rejected] == [("a", "too_large")]
    assert metrics["decode"]["rejected"] == 1
    # Validate keeps its own check, for pipelines whose payloads reach it undecoded.
    raw = ClientUpdate("b", 2, 1, tensors={"w": torch.zeros(3864)}, payload=big)
    with pytest.raises(UpdateRejected, match="15640 bytes"):
        check_update(raw, PLAN, shapes=shapes, max_bytes=limit)


def test_a_full_default_intake_by_hand() -> None:
    # decode -> validate -> norm guard -> mean over three honest updates and one blown up
    codec = CODECS.create("fp32")
    updates = [
        ClientUpdate(cid, 2, n, payload=codec.encode({"w": torch.tensor(w)}))
        for cid, n, w in [("a", 1, [1.0, 0.0]), ("b", 3, [0.0, 2.0]), ("c", 1, [3e37, 0.0])]
    ]
    pipeline = Pipeline(
        [DecodeStage(codec, shapes=SHAPES, max_bytes=1_000), Validate(SHAPES), NormGuard(), WeightedMean()],
        order=SERVER_ORDER,
        side="server",
    )
    _, out, metrics = pipeline.apply(pipeline.init(), CohortValue(updates), PLAN)
    # norms 1, 2, 3e37: lower median 2, threshold 20; mean of a and b weighted 1:3
    assert metrics["norm_guard"] == {"median": 2.0, "threshold": 20.0, "rejected": ["c"]}
    assert out.aggregate["w"].tolist() == [0.25, 1.5]
