import math

import pytest
import torch

from fedlm.attacks import updates as U
from fedlm.errors import ConfigError


def _delta():
    return {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([[0.0, 0.0]])}


def test_replacement_boost_is_n_over_eta():
    assert U.replacement_boost(10, 0.5) == 20.0
    with pytest.raises(ConfigError, match="server_lr"):
        U.replacement_boost(10, 0.0)


def test_scale_sign_flip_and_norm():
    d = _delta()
    assert torch.equal(U.scale(d, 2.0)["w"], torch.tensor([6.0, 8.0]))
    assert torch.equal(U.sign_flip(d, 0.5)["w"], torch.tensor([-1.5, -2.0]))
    assert U.global_norm(d) == 5.0
    out = U.scale_to_norm(d, 10.0)
    assert torch.equal(out["w"], torch.tensor([6.0, 8.0])) and torch.equal(
        out["b"], torch.zeros(1, 2)
    )
    assert torch.equal(d["w"], torch.tensor([3.0, 4.0]))  # input untouched


def test_scale_to_norm_of_a_zero_delta_uses_all_ones():
    out = U.scale_to_norm({"w": torch.zeros(4)}, 2.0)
    assert torch.allclose(out["w"], torch.full((4,), 1.0))  # 4 entries of 1.0 have norm 2


def test_gaussian_replace_and_add_use_the_same_draw():
    d = _delta()
    rep = U.gaussian(d, 2.0, generator=torch.Generator().manual_seed(0))
    add = U.gaussian(d, 2.0, generator=torch.Generator().manual_seed(0), mode="add")
    g = torch.Generator().manual_seed(0)
    expect_b = torch.randn((1, 2), generator=g) * 2.0  # sorted names: "b" before "w"
    expect_w = torch.randn((2,), generator=g) * 2.0
    assert torch.equal(rep["b"], expect_b) and torch.equal(rep["w"], expect_w)
    assert torch.equal(add["w"], d["w"] + expect_w)
    big = U.gaussian({"x": torch.zeros(20000)}, 2.0, generator=torch.Generator().manual_seed(1))
    assert abs(float(big["x"].std()) - 2.0) < 0.05


def test_insert_nan_counts_and_keeps_other_entries():
    d = {"w": torch.arange(4.0), "v": torch.ones(3, dtype=torch.float16)}
    out = U.insert_nan(d, 0.5, generator=torch.Generator().manual_seed(0))
    assert int(out["w"].isnan().sum()) == 2
    assert int(out["v"].isnan().sum()) == 2  # ceil(0.5 * 3)
    keep = ~out["w"].isnan()
    assert torch.equal(out["w"][keep], d["w"][keep]) and out["v"].dtype == torch.float16
    assert not d["w"].isnan().any()
    assert U.insert_nan(d, 1.0, generator=torch.Generator())["w"].isnan().all()
    with pytest.raises(ConfigError, match="not floating"):
        U.insert_nan({"i": torch.arange(3)}, 1.0, generator=torch.Generator())


def test_collude_is_the_mean():
    out = U.collude([{"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([3.0, 5.0])}])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    with pytest.raises(ConfigError, match="same tensor names"):
        U.collude([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}])


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_parameters_are_rejected(bad):
    with pytest.raises(ConfigError):
        U.scale(_delta(), bad)
    with pytest.raises(ConfigError):
        U.scale_to_norm(_delta(), bad)
