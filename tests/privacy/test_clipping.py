import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlm.errors import ConfigError
from fedlm.privacy.clipping import (
    adaptive_clip_update,
    clip_update,
    global_l2_norm,
    noisy_unclipped_fraction,
    split_noise_multiplier,
    unclipped_fraction,
)


def test_global_norm_treats_all_tensors_as_one_vector():
    tensors = {"a": torch.tensor([3.0]), "b": torch.tensor([[0.0, 4.0]])}
    assert global_l2_norm(tensors) == pytest.approx(5.0)
    assert global_l2_norm({}) == 0.0


def test_clip_scales_by_c_over_norm_and_returns_pre_clip_norm():
    tensors = {"a": torch.tensor([3.0]), "b": torch.tensor([[0.0, 4.0]])}
    clipped, norm = clip_update(tensors, 1.0)
    assert norm == pytest.approx(5.0)
    assert clipped["a"].item() == pytest.approx(0.6, rel=1e-5)
    assert clipped["b"][0, 1].item() == pytest.approx(0.8, rel=1e-5)
    assert global_l2_norm(clipped) <= 1.0
    assert tensors["a"].item() == 3.0  # input untouched


def test_update_under_the_bound_is_unchanged():
    tensors = {"a": torch.tensor([0.3, -0.4])}
    clipped, norm = clip_update(tensors, 1.0)
    assert norm == pytest.approx(0.5)
    assert torch.equal(clipped["a"], tensors["a"])
    assert clipped["a"] is not tensors["a"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_clipping_stays_under_the_bound(dtype):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tensors = {
            "w": (torch.randn(257, generator=g) * 10).to(dtype),
            "b": torch.randn(3, generator=g).to(dtype),
        }
        clipped, _ = clip_update(tensors, 0.37)
        assert clipped["w"].dtype == dtype
        assert global_l2_norm(clipped) <= 0.37


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=20),
        min_size=1,
        max_size=4,
    ),
    clip=st.floats(1e-4, 1e3),
)
def test_clipped_norm_never_exceeds_c(values, clip):
    tensors = {f"t{i}": torch.tensor(v, dtype=torch.float32) for i, v in enumerate(values)}
    clipped, norm = clip_update(tensors, clip)
    assert global_l2_norm(clipped) <= clip
    if norm > clip:
        # Direction is kept: clipped is a positive multiple of the input.
        scale = clip / norm
        for k in tensors:
            expected = tensors[k].double() * scale
            assert torch.allclose(clipped[k].double(), expected, rtol=1e-4, atol=1e-6 * clip)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_clip_norm_is_rejected(bad):
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_update({"a": torch.ones(2)}, bad)


def test_nan_update_is_rejected():
    with pytest.raises(ConfigError, match="NaN"):
        clip_update({"a": torch.tensor([float("nan")])}, 1.0)


def test_split_noise_multiplier_matches_hand_computation_and_recomposes():
    # z = 1, sigma_b = 1: z_delta = (1 - 1/4)^(-1/2)
    z_delta = split_noise_multiplier(1.0, 1.0)
    assert z_delta == pytest.approx(1.0 / math.sqrt(0.75))
    # Composing z_delta with 2*sigma_b gives back z.
    assert (z_delta**-2 + 2.0**-2) ** -0.5 == pytest.approx(1.0)


@pytest.mark.parametrize("sigma_b", [0.5, 0.3, 0.0])
def test_split_rejects_count_noise_too_small(sigma_b):
    with pytest.raises(ConfigError, match="clipped_count_stddev"):
        split_noise_multiplier(1.0, sigma_b)


def test_unclipped_fraction_counts_norms_at_or_below_c():
    assert unclipped_fraction([0.5, 1.0, 1.5, 3.0], 1.0) == 0.5
    assert unclipped_fraction([], 1.0) == 0.0


def test_noisy_fraction_without_noise_is_exact_when_count_is_expected():
    assert noisy_unclipped_fraction([1, 1, 0, 1], 4, stddev=0.0) == pytest.approx(0.75)
    # Denominator is the expected count: 3 unclipped of 3 received, 4 expected -> 0.5 + 1.5/4
    assert noisy_unclipped_fraction([1, 1, 1], 4, stddev=0.0) == pytest.approx(0.875)


def test_noisy_fraction_noise_has_std_sigma_b_over_m():
    g = torch.Generator().manual_seed(1)
    draws = np.array(
        [noisy_unclipped_fraction([1, 0] * 10, 20, stddev=2.0, generator=g) for _ in range(4000)]
    )
    assert draws.mean() == pytest.approx(0.5, abs=0.01)
    assert draws.std() == pytest.approx(2.0 / 20, rel=0.05)


def test_adaptive_step_matches_geometric_rule():
    # All unclipped (b=1 > gamma=0.5): C shrinks by exp(-0.2 * 0.5)
    assert adaptive_clip_update(1.0, 1.0, target_quantile=0.5, clip_lr=0.2) == pytest.approx(
        math.exp(-0.1)
    )
    assert adaptive_clip_update(2.0, 0.0, target_quantile=0.5, clip_lr=0.2) == pytest.approx(
        2.0 * math.exp(0.1)
    )
    assert adaptive_clip_update(2.0, 0.5, target_quantile=0.5, clip_lr=0.2) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_quantile": 0.0, "clip_lr": 0.2},
        {"target_quantile": 1.0, "clip_lr": 0.2},
        {"target_quantile": 0.5, "clip_lr": 0.0},
    ],
)
def test_adaptive_step_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        adaptive_clip_update(1.0, 0.5, **kwargs)


@pytest.mark.parametrize("stddev", [0.0, 5.0])  # sigma_b = m / 20 with m = 100 (Andrew et al.)
@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_adaptive_clipping_converges_to_target_quantile(stddev, quantile):
    rng = np.random.default_rng(0)
    population = rng.lognormal(mean=0.0, sigma=1.0, size=20_000)
    target = float(np.quantile(population, quantile))
    g = torch.Generator().manual_seed(2)
    c, history = 0.1, []
    for _ in range(250):
        norms = rng.choice(population, size=100, replace=False)
        bits = [1.0 if n <= c else 0.0 for n in norms]
        b = noisy_unclipped_fraction(bits, 100, stddev=stddev, generator=g)
        c = adaptive_clip_update(c, b, target_quantile=quantile, clip_lr=0.2)
        history.append(c)
    assert history[-1] == pytest.approx(target, rel=0.10)
    assert float(np.mean(history[-50:])) == pytest.approx(target, rel=0.05)
    assert history[5] < 0.5 * target  # started far away: the test measures convergence
