import pytest
import torch

from fedlm.aggregation.fedavg import WeightedMean, weighted_mean
from fedlm.aggregation.validate import Validate
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

PLAN = RoundPlan(round=3, cohort=("a", "b", "c"), lr=0.1, local_steps=1, seed=0)
SHAPES = {"w": (2,), "b": (1,)}


def _u(cid, w, b, n, **kw):
    return ClientUpdate(client_id=cid, round=kw.pop("round", 3), num_examples=n,
                        tensors={"w": torch.tensor(w), "b": torch.tensor(b)}, **kw)


def test_weighted_mean_by_hand():
    # weights 1 and 3: (1*[1,2] + 3*[5,6]) / 4 = [4, 5]; (1*0 + 3*4)/4 = 3
    out = weighted_mean([{"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])},
                         {"w": torch.tensor([5.0, 6.0]), "b": torch.tensor([4.0])}], [1, 3])
    assert out["w"].tolist() == [4.0, 5.0] and out["b"].tolist() == [3.0]
    assert out["w"].dtype == torch.float32


@pytest.mark.parametrize(("weighting", "expected"), [("examples", [4.0, 5.0]), ("uniform", [3.0, 4.0])])
def test_weighted_mean_stage(weighting, expected):
    value = CohortValue([_u("a", [1.0, 2.0], [0.0], 1), _u("b", [5.0, 6.0], [4.0], 3)])
    _, value, metrics = WeightedMean(weighting=weighting).apply(None, value, PLAN)
    assert value.aggregate["w"].tolist() == expected
    assert metrics["clients"] == 2


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (_u("zz", [1.0, 1.0], [1.0], 1), "not_in_cohort"),
        (_u("a", [1.0, 1.0], [1.0], 1, round=2), "wrong_round"),
        (_u("a", [float("nan"), 1.0], [1.0], 1), "non_finite"),
        (_u("a", [float("inf"), 1.0], [1.0], 1), "non_finite"),
        (_u("a", [1.0, 1.0], [1.0], 0), "bad_weight"),
        (_u("a", [1.0, 1.0, 1.0], [1.0], 1), "shape"),
        (ClientUpdate("a", 3, 1, tensors={"w": torch.zeros(2)}), "names"),
        (ClientUpdate("a", 3, 1, tensors={"w": torch.zeros(2, dtype=torch.int64), "b": torch.zeros(1)}), "dtype"),
        (_u("a", [30.0, 40.0], [0.0], 1), "norm"),
        (_u("a", [1.0, 1.0], [1.0], 1, payload=b"x" * 101), "too_large"),
        (ClientUpdate("a", 3, 1), "missing"),
    ],
)
def test_validation_rejects_each_malformed_kind_with_its_reason(update, reason):
    value = CohortValue([update, _u("b", [1.0, 1.0], [1.0], 2)])
    _, value, metrics = Validate(SHAPES, max_norm=10.0, max_bytes=100).apply(None, value, PLAN)
    assert [u.client_id for u in value.updates] == ["b"]
    assert value.rejected[0]["reason"] == reason
    assert value.rejected[0]["client_id"] == update.client_id
    assert metrics == {"accepted": 1, "rejected": 1, "norms": {"b": pytest.approx(3**0.5)}}


def test_validation_rejects_a_second_update_from_the_same_client():
    value = CohortValue([_u("a", [1.0, 1.0], [1.0], 1), _u("a", [2.0, 2.0], [1.0], 1)])
    _, value, _ = Validate(SHAPES).apply(None, value, PLAN)
    assert len(value.updates) == 1 and value.rejected[0]["reason"] == "duplicate"
