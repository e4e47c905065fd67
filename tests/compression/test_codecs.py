"""Codecs: round trips within documented bounds, unbiasedness, exact bytes, hostile payloads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlm.compression.codecs import CODECS, Codec, decode
from fedlm.compression.wire import pack, unpack
from fedlm.config.compression import CODEC_PARAMS, CompressionConfig
from fedlm.errors import ConfigError, UpdateRejected

# (registry name, kwargs): every codec, per-tensor and per-block where it applies.
CASES = [
    ("fp32", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("int8", {}),
    ("int8", {"block_size": 8}),
    ("int8", {"block_size": 64}),
    ("int8", {"fixed_scale": 4.0}),
    ("int4", {}),
    ("int4", {"block_size": 8}),
    ("int4", {"block_size": 128}),
    ("int4", {"fixed_scale": 4.0}),
    ("topk", {"fraction": 0.1}),
    ("topk", {"fraction": 0.01, "value_dtype": "float32"}),
    ("topk", {"fraction": 1.0}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sample_update() -> dict[str, torch.Tensor]:
    """Odd shapes: non-multiple of any block, scalar, one element, empty, zeros."""
    g = gen(123)
    return {
        "layers.0.q_proj.lora_A": torch.randn(37, 5, generator=g),  # 185 elements
        "layers.0.v_proj.lora_B": torch.randn(3, 129, generator=g) * 1e-3,
        "scalar": torch.tensor(-1.75),
        "one": torch.tensor([0.3]),
        "empty": torch.zeros(4, 0),
        "zeros": torch.zeros(10),
    }


def block_scales(x: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """Per-element max-abs scale of x's block, computed independently of the codec."""
    flat = x.reshape(-1).abs()
    if flat.numel() == 0:
        return flat
    if block_size is None:
        return flat.max().expand(flat.numel())
    return torch.stack(
        [flat[(i // block_size) * block_size :][:block_size].max() for i in range(flat.numel())]
    )


def check_bound(name: str, kw: dict, x: torch.Tensor, y: torch.Tensor) -> None:
    """Assert each codec's documented error bound for one tensor."""
    x, y = x.reshape(-1), y.reshape(-1)
    err = (y - x).abs()
    if name == "fp32":
        assert torch.equal(x, y)
    elif name == "fp16":
        assert bool((err <= 2**-11 * x.abs() + 2**-25).all())
    elif name == "bf16":
        assert bool((err <= 2**-8 * x.abs()).all())
    elif name in ("int8", "int4"):
        levels = 127 if name == "int8" else 7
        if "fixed_scale" in kw:
            scale = torch.full_like(x, kw["fixed_scale"])
        else:
            scale = block_scales(x, kw.get("block_size"))
        assert bool((err <= scale / levels * (1 + 1e-6)).all())
        # Decoded values sit on the grid k * scale / levels.
        k = y / torch.where(scale > 0, scale, 1) * levels
        assert torch.allclose(k, k.round(), atol=1e-3)
    else:  # topk
        n = x.numel()
        kept = y != 0
        k = min(n, max(1, math.ceil(kw["fraction"] * n))) if n else 0
        assert int(kept.sum()) <= k  # fewer only where kept values are exactly zero
        if kept.any() and (~kept).any():
            assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())
        rel = 2**-11 if kw.get("value_dtype", "float16") == "float16" else 0.0
        assert bool((err[kept] <= rel * x[kept].abs() + 2**-25).all())
        # Contraction of the sparsifier (Stich et al. 2018): ||x - topk(x)||² <= (1 - k/n) ||x||².
        if n:
            assert float(x[~kept].square().sum()) <= (1 - k / n) * float(x.square().sum()) * (
                1 + 1e-6
            )


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_round_trip_within_documented_bound(name: str, kw: dict) -> None:
    codec = CODECS.create(name, **kw)
    x = sample_update()
    payload = codec.encode(x, generator=gen())
    y = codec.decode(payload)
    assert list(y) == list(x)
    for key in x:
        assert y[key].shape == x[key].shape and y[key].dtype == x[key].dtype
        check_bound(name, kw, x[key], y[key])
    assert codec.decode(codec.encode({}, generator=gen())) == {}


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_payload_is_self_describing_and_deterministic(name: str, kw: dict) -> None:
    codec = CODECS.create(name, **kw)
    x = sample_update()
    payload = codec.encode(x, generator=gen(5))
    # Same seed, same content (safetensors may order the JSON header differently).
    again = codec.encode(x, generator=gen(5))
    assert len(again) == len(payload)
    first, second = unpack(payload)[0], unpack(again)[0]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    _, meta = unpack(payload)
    assert meta["codec"] == name and json.loads(meta["params"]) == codec.params()
    # The module-level decode needs nothing but the bytes.
    for key, t in decode(payload).items():
        assert torch.equal(t, codec.decode(payload)[key])


def test_original_dtype_is_restored() -> None:
    # On the grid of scale 2 (codes 127, -127, 0), so rounding is deterministic.
    x = {
        "h": torch.tensor([2.0, -2.0, 0.0], dtype=torch.float16),
        "b": torch.tensor([1.0], dtype=torch.bfloat16),
    }
    y = CODECS.create("int8").decode(CODECS.create("int8").encode(x, generator=gen()))
    assert y["h"].dtype == torch.float16 and y["b"].dtype == torch.bfloat16
    assert torch.equal(y["h"], x["h"]) and torch.equal(y["b"], x["b"])  # both on the grid


def test_int8_hand_worked() -> None:
    # scale 1, 127 levels: y = [127, -63.5, 31.75, 0] rounds to a neighbour on each side.
    x = {"w": torch.tensor([1.0, -0.5, 0.25, 0.0])}
    codec = CODECS.create("int8")
    stored, _ = unpack(codec.encode(x, generator=gen()))
    q = stored["0.q"].tolist()
    assert q[0] == 127 and q[1] in (-63, -64) and q[2] in (31, 32) and q[3] == 0
    assert stored["0.s"].tolist() == [1.0]


def test_int4_packs_two_codes_per_byte_and_pads() -> None:
    # On-grid values round deterministically: q = [7, -7, 0]; codes q + 8 = [15, 1, 8], pad 8.
    x = {"w": torch.tensor([2.0, -2.0, 0.0])}
    codec = CODECS.create("int4")
    payload = codec.encode(x, generator=gen())
    stored, _ = unpack(payload)
    assert stored["0.q"].tolist() == [15 | (1 << 4), 8 | (8 << 4)]
    assert torch.equal(codec.decode(payload)["w"], x["w"])


def test_topk_hand_worked() -> None:
    x = {"w": torch.tensor([0.1, -3.0, 2.0, 0.5])}
    codec = CODECS.create("topk", fraction=0.5, value_dtype="float32")
    stored, _ = unpack(codec.encode(x))
    assert stored["0.i"].tolist() == [1, 2] and stored["0.v"].tolist() == [-3.0, 2.0]
    assert codec.decode(codec.encode(x))["w"].tolist() == [0.0, -3.0, 2.0, 0.0]


@pytest.mark.parametrize(
    ("name", "kw"), [c for c in CASES if c[0] in ("int8", "int4")], ids=lambda v: str(v)
)
def test_stochastic_rounding_is_unbiased(name: str, kw: dict) -> None:
    # 16 values in [-1, 1] (max 1, so scale 1 per tensor and per 8-block) placed off-grid.
    x = torch.linspace(-0.93, 1.0, 16)
    codec = CODECS.create(name, **kw)
    scale = kw.get("fixed_scale", 1.0)
    step = scale / (127 if name == "int8" else 7)
    n = 1500
    total = torch.zeros(16, dtype=torch.float64)
    for seed in range(n):
        total += codec.decode(codec.encode({"x": x}, generator=gen(seed)))["x"].double()
    mean = total / n
    # Each draw is one of two grid points a step apart: variance <= step² / 4, so the
    # mean's std is <= step / (2 sqrt n); 5 std bounds all 16 coordinates (p < 1e-5).
    tol = 5 * step / (2 * math.sqrt(n))
    assert float((mean - x.double()).abs().max()) <= tol
    # The test can fail: nearest rounding would be off by more than tol somewhere.
    off_grid = (x / step - (x / step).round()).abs() * step
    assert float(off_grid.max()) > 3 * tol


def data_bytes(payload: bytes) -> int:
    """Bytes after the safetensors header: the tensor data alone."""
    return len(payload) - 8 - int.from_bytes(payload[:8], "little")


def test_byte_counts_are_exact_and_ratios_match() -> None:
    n = 256 * 256
    x = {"a": torch.randn(256, 256, generator=gen(1))}
    raw = 4 * n
    sizes = {}
    for name, kw, expected_data in [
        ("fp32", {}, raw),
        ("fp16", {}, 2 * n),
        ("bf16", {}, 2 * n),
        ("int8", {}, n + 4),
        ("int8", {"block_size": 256}, n + 4 * (n // 256)),
        ("int4", {}, n // 2 + 4),
        ("int4", {"block_size": 64}, n // 2 + 4 * (n // 64)),
        ("topk", {"fraction": 0.01}, math.ceil(0.01 * n) * (2 + 4)),
        ("topk", {"fraction": 0.01, "value_dtype": "float32"}, math.ceil(0.01 * n) * (4 + 4)),
    ]:
        payload = CODECS.create(name, **kw).encode(x, generator=gen())
        assert data_bytes(payload) == expected_data, (name, kw)
        assert len(payload) - expected_data < 400  # the header is small and fixed
        sizes[(name, tuple(kw.items()))] = len(payload)
    assert 3.9 < raw / sizes[("int8", ())] <= 4.0
    assert 7.8 < raw / sizes[("int4", ())] <= 8.0
    topk = sizes[("topk", (("fraction", 0.01),))]
    assert topk == pytest.approx(6 / 4 * 0.01 * raw, abs=400)


def test_odd_length_int4_and_last_short_block() -> None:
    x = {"w": torch.randn(131, generator=gen(2))}  # 131 = 2 * 64 + 3: odd, short block
    payload = CODECS.create("int4", block_size=64).encode(x, generator=gen())
    stored, _ = unpack(payload)
    assert stored["0.q"].numel() == 66 and stored["0.s"].numel() == 3
    assert float(stored["0.s"][2]) == float(x["w"][128:].abs().max())


def test_fixed_scale_codec_is_linear() -> None:
    # Summing two clients' integer codes, then decoding, equals the sum of their decodes:
    # what secure aggregation needs (it can only add encoded values).
    codec = CODECS.create("int8", fixed_scale=2.0)
    a, b = torch.rand(50, generator=gen(3)) * 2 - 1, torch.rand(50, generator=gen(4)) * 2 - 1
    pa, pb = codec.encode({"w": a}, generator=gen(5)), codec.encode({"w": b}, generator=gen(6))
    qa, qb = unpack(pa)[0]["0.q"].int(), unpack(pb)[0]["0.q"].int()
    summed = (qa + qb).float() * (2.0 / 127)
    assert torch.allclose(summed, codec.decode(pa)["w"] + codec.decode(pb)["w"], atol=1e-6)


# name -> (unbiased, secagg_compatible, needs_individual_updates)
PROPERTIES = {
    ("fp32", ()): (True, True, False),
    ("fp16", ()): (False, True, False),
    ("bf16", ()): (False, True, False),
    ("int8", ()): (True, False, True),
    ("int4", (("block_size", 64),)): (True, False, True),
    ("int4", (("fixed_scale", 1.0),)): (True, True, False),
    ("topk", (("fraction", 0.1),)): (False, False, True),
}


@pytest.mark.parametrize("key", list(PROPERTIES), ids=str)
def test_codec_properties(key: tuple) -> None:
    codec = CODECS.create(key[0], **dict(key[1]))
    assert isinstance(codec, Codec)
    assert (codec.unbiased, codec.secagg_compatible, codec.needs_individual_updates) == PROPERTIES[
        key
    ]


def test_registry_matches_config_table() -> None:
    assert CODECS.names() == sorted(CODEC_PARAMS)
    with pytest.raises(ConfigError, match="unknown codec"):
        CODECS.create("zip")
    for name in CODECS.names():
        for params in ({}, {"fixed_scale": 1.5}, {"value_dtype": "float32"}):
            if not set(params) <= CODEC_PARAMS[name]:
                continue
            cfg = CompressionConfig(upload=name, upload_params=params)
            built = CODECS.create(*cfg.codec_spec("upload")[:1], **cfg.codec_spec("upload")[1])
            assert built.name == name
            assert cfg.secagg_compatible == built.secagg_compatible


@pytest.mark.parametrize(
    ("name", "kw", "x", "reason"),
    [
        ("fp32", {}, torch.tensor([1.0, math.nan]), "non_finite"),
        ("int8", {}, torch.tensor([math.inf]), "non_finite"),
        ("fp16", {}, torch.tensor([1.0e5]), "overflow"),
        ("topk", {"fraction": 1.0}, torch.tensor([7.0e4]), "overflow"),
        ("int8", {"fixed_scale": 1.0}, torch.tensor([0.5, -1.5]), "out_of_range"),
        ("fp32", {}, torch.tensor([1, 2]), "dtype"),
    ],
)
def test_encode_rejects_unrepresentable_updates(
    name: str, kw: dict, x: torch.Tensor, reason: str
) -> None:
    with pytest.raises(UpdateRejected) as info:
        CODECS.create(name, **kw).encode({"w": x}, generator=gen())
    assert info.value.reason == reason


def test_stochastic_codec_needs_a_generator() -> None:
    with pytest.raises(ConfigError, match="generator"):
        CODECS.create("int4").encode({"w": torch.ones(2)})


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("int8", {"bits": 8}),
        ("int8", {"block_size": 0}),
        ("int4", {"fixed_scale": -1.0}),
        ("topk", {"fraction": 0.0}),
        ("topk", {"fraction": 0.1, "value_dtype": "int8"}),
    ],
)
def test_bad_codec_parameters_are_config_errors(name: str, kw: dict) -> None:
    with pytest.raises((ConfigError, TypeError)):
        CODECS.create(name, **kw)


def test_decode_rejects_another_codec() -> None:
    payload = CODECS.create("int8").encode({"w": torch.ones(3)}, generator=gen())
    for other in (CODECS.create("fp32"), CODECS.create("int8", block_size=64)):
        with pytest.raises(UpdateRejected) as info:
            other.decode(payload)
        assert info.value.reason == "codec_mismatch"


def forge(
    name: str, kw: dict, replace: dict[str, torch.Tensor] | None = None, **meta: str
) -> bytes:
    """A payload of a valid encode with some parts or metadata swapped."""
    codec = CODECS.create(name, **kw)
    stored, m = unpack(codec.encode({"w": torch.tensor([1.0, -0.5, 0.25])}, generator=gen()))
    stored.update(replace or {})
    m.update(meta)
    m.pop("fedlm_schema")
    return pack(stored, metadata=m)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (forge("int8", {}, {"0.q": torch.tensor([-128, 0, 1], dtype=torch.int8)}), "malformed"),
        (forge("int8", {}, {"0.q": torch.tensor([1, 2], dtype=torch.int8)}), "malformed"),
        (forge("int8", {}, {"0.s": torch.tensor([math.nan])}), "malformed"),
        (forge("int8", {}, {"0.s": torch.tensor([-1.0])}), "malformed"),
        (forge("int4", {}, {"0.q": torch.tensor([0x0F, 0x0F], dtype=torch.uint8)}), "malformed"),
        (
            forge("int4", {}, {"0.q": torch.tensor([0x88, 0x18], dtype=torch.uint8)}),
            "malformed",
        ),  # pad
        (
            forge("topk", {"fraction": 0.7}, {"0.i": torch.tensor([2, 1], dtype=torch.int32)}),
            "malformed",
        ),
        (
            forge("topk", {"fraction": 0.7}, {"0.i": torch.tensor([0, 3], dtype=torch.int32)}),
            "malformed",
        ),
        (
            forge("topk", {"fraction": 0.7}, {"0.i": torch.tensor([0, 0], dtype=torch.int32)}),
            "malformed",
        ),
        (forge("fp32", {}, {"0.v": torch.zeros(3, dtype=torch.float64)}), "malformed"),
        (forge("fp32", {}, {"1.v": torch.zeros(3)}), "malformed"),
        (forge("fp32", {}, tensors='[["w",[3],"int64"]]'), "malformed"),
        (forge("fp32", {}, tensors='[["w",[4],"float32"]]'), "malformed"),
        (forge("fp32", {}, tensors="{"), "malformed"),
        (forge("fp32", {}, codec="gzip"), "malformed"),
        (forge("int8", {}, params='{"bits": 3}'), "malformed"),
        (
            forge(
                "topk",
                {"fraction": 0.7},
                params='{"fraction": 1e-12, "value_dtype": "float16"}',
                tensors='[["w",[1000000,1000000],"float32"]]',
            ),
            "too_large",
        ),
        (b"", "malformed"),
        (b"\x00" * 64, "malformed"),
    ],
)
def test_decode_rejects_forged_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(UpdateRejected) as info:
        decode(payload)
    assert info.value.reason == reason


VALID = [CODECS.create(n, **kw).encode(sample_update(), generator=gen()) for n, kw in CASES[::2]]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=12,
)
# Near-valid metadata: well-typed entries with hostile sizes, and plausible parameters.
ENTRIES = st.lists(
    st.tuples(
        st.sampled_from(["layers.0.q_proj.lora_A", "scalar", "x"]),
        st.lists(st.integers(-2, 2**40) | st.integers(0, 200), max_size=3),
        st.sampled_from(["float32", "float16", "bfloat16", "int8"]),
    ).map(list),
    max_size=7,
).map(json.dumps)
PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "block_size": st.integers(-1, 2**40) | st.none(),
        "fixed_scale": st.floats() | st.none(),
        "fraction": st.floats(),
        "value_dtype": st.sampled_from(["float16", "float32", "int8"]),
    },
).map(json.dumps)


def _decode_or_reject(payload: bytes) -> None:
    try:
        out = decode(payload, max_numel=10**6)
    except UpdateRejected:
        return
    assert isinstance(out, dict)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=300)
    | st.builds(lambda b: len(b).to_bytes(8, "little") + b, st.binary(max_size=200))
)
def test_random_bytes_only_raise_update_rejected(payload: bytes) -> None:
    _decode_or_reject(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_mutated_payloads_only_raise_update_rejected(valid: bytes, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["flip", "truncate", "metadata"]))
    if kind == "flip":
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 4))):
            buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        payload = bytes(buf)
    elif kind == "truncate":
        payload = valid[: data.draw(st.integers(0, len(valid) - 1))]
    else:
        stored, meta = unpack(valid)
        key = data.draw(st.sampled_from(["codec", "params", "tensors"]))
        near = {
            "codec": st.sampled_from(sorted(CODEC_PARAMS)),
            "params": PARAMS,
            "tensors": ENTRIES,
        }[key]
        meta[key] = data.draw(st.text(max_size=20) | JSON.map(json.dumps) | near)
        meta.pop("fedlm_schema")
        payload = pack(stored, metadata=meta)
    _decode_or_reject(payload)
