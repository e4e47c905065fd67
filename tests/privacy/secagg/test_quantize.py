import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedlm.errors import ConfigError
from fedlm.privacy.secagg.quantize import (
    LEVEL_SLACK,
    dequantize,
    dequantize_sum,
    quantize,
    required_modulus_bits,
    step_size,
    sum_error_bound,
    upload_expansion,
)


def test_hand_worked_levels():
    # bits=2, clip=1.5: levels 0..3, step 1; -1.5 -> 0, 0.5 -> 2, 1.5 -> 3 exactly; 9 clips to 3.
    rng = np.random.default_rng(0)
    q = quantize(np.array([-1.5, 0.5, 1.5, 9.0, -9.0]), bits=2, clip=1.5, rng=rng)
    assert q.tolist() == [0, 2, 3, 3, 0]
    assert dequantize(q, bits=2, clip=1.5).tolist() == [-1.5, 0.5, 1.5, 1.5, -1.5]


def test_stochastic_rounding_is_unbiased():
    # bits=2, clip=1.5: scaled = (0.25 + 1.5) * 3 / 3 = 1.75, so level 2 with
    # probability 0.75 and level 1 with 0.25; the mean level is 1.75.
    q = quantize(np.full(40_000, 0.25), bits=2, clip=1.5, rng=np.random.default_rng(1))
    assert set(q.tolist()) == {1, 2}
    assert abs(q.mean() - 1.75) < 0.01


@settings(max_examples=100, deadline=None)
@given(
    x=arrays(np.float64, st.integers(1, 50), elements=st.floats(-2.0, 2.0)),
    bits=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_within_one_step(x, bits, seed):
    q = quantize(x, bits=bits, clip=2.0, rng=np.random.default_rng(seed))
    assert q.max() <= (1 << bits) - 1
    err = np.abs(dequantize(q, bits=bits, clip=2.0) - x)
    assert err.max() <= step_size(bits=bits, clip=2.0) * (1 + LEVEL_SLACK)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 20), seed=st.integers(0, 2**32 - 1), weight=st.integers(1, 5))
def test_weighted_sum_within_documented_bound(n, seed, weight):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1, 1, size=(n, 30))
    total = sum(weight * quantize(x, bits=8, clip=1.0, rng=rng) for x in xs)
    got = dequantize_sum(total, bits=8, clip=1.0, total_weight=n * weight)
    bound = sum_error_bound(n * weight, bits=8, clip=1.0)
    assert np.abs(got - weight * xs.sum(axis=0)).max() <= bound * (1 + 1e-9)


def test_modulus_headroom_and_expansion():
    assert required_modulus_bits(1, bits=16) == 16
    assert required_modulus_bits(100, bits=16) == 23  # 100 * 65535 < 2^23
    assert required_modulus_bits(100, bits=16, max_weight=600) == 32
    assert required_modulus_bits(100, bits=16, max_weight=700) == 33
    assert (
        upload_expansion(32) == 1.0
        and upload_expansion(24) == 0.75
        and upload_expansion(33) == 1.25
    )


@pytest.mark.parametrize("bits,clip", [(0, 1.0), (33, 1.0), (8, 0.0), (8, float("inf"))])
def test_bad_parameters_rejected(bits, clip):
    with pytest.raises(ConfigError):
        quantize(np.zeros(2), bits=bits, clip=clip, rng=np.random.default_rng(0))


@pytest.mark.parametrize("length", [0, 1, (1 << 17) - 1, (1 << 17) + 3])
@pytest.mark.parametrize("bits,dtype", [(16, np.uint32), (16, np.uint64), (24, np.uint64)])
def test_chunked_levels_match_across_chunk_edges_and_into_out(length, bits, dtype):
    # Every value is a hand-worked level (exact, no rounding), repeated across the chunk
    # edge at 2^17 values: -c -> 0, 0 -> half way rounded to an exact level, c -> 2^b - 1.
    clip, top = 0.5, (1 << bits) - 1
    x = np.resize(np.array([-clip, clip, 7.0, -7.0]), length)
    want = np.resize(np.array([0, top, top, 0], dtype=dtype), length)
    got = quantize(x, bits=bits, clip=clip, rng=np.random.default_rng(1), dtype=dtype)
    assert got.dtype == dtype and np.array_equal(got, want)
    out = np.full(length, 12345, dtype=dtype)
    same = quantize(x, bits=bits, clip=clip, rng=np.random.default_rng(1), dtype=dtype, out=out)
    assert same is out and np.array_equal(out, want)


def test_an_out_buffer_of_the_wrong_shape_or_type_is_refused():
    x = np.zeros(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="out has shape"):
        quantize(x, bits=8, clip=1.0, rng=np.random.default_rng(0), dtype=np.uint32, out=np.empty(5, np.uint32))
    with pytest.raises(ConfigError, match="dtype uint64"):
        quantize(x, bits=8, clip=1.0, rng=np.random.default_rng(0), dtype=np.uint32, out=np.empty(4, np.uint64))
