"""Encode/decode stages, error feedback, broadcast helpers, and the compression config."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import (
    DecodeStage,
    EncodeStage,
    decode_broadcast,
    derive_generator,
    encode_broadcast,
    encode_with_feedback,
)
from fedlm.config.compression import CompressionConfig
from fedlm.errors import ConfigError, PipelineError, ProtocolError
from fedlm.stages import (
    CLIENT_ORDER,
    SERVER_ORDER,
    ClientUpdate,
    CohortValue,
    Pipeline,
    RoundPlan,
    Stage,
)


def plan(round_: int = 1, seed: int = 7) -> RoundPlan:
    return RoundPlan(round=round_, cohort=("a", "b"), lr=0.1, local_steps=1, seed=seed)


def update(client_id: str = "a", **tensors: torch.Tensor) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id, round=1, num_examples=3, tensors=tensors or {"w": torch.ones(4)}
    )


def test_stages_meet_the_contract_and_fit_the_pipelines() -> None:
    enc, dec = EncodeStage(CODECS.create("fp16")), DecodeStage(CODECS.create("fp16"))
    assert isinstance(enc, Stage) and isinstance(dec, Stage)
    assert Pipeline([enc], order=CLIENT_ORDER, side="client").kinds() == ["encode"]
    assert Pipeline([dec], order=SERVER_ORDER, side="server").kinds() == ["decode"]


def test_encode_stage_sets_payload_and_counts_exact_bytes() -> None:
    stage = EncodeStage(CODECS.create("int8"))
    before = update(w=torch.randn(10, 3), b=torch.randn(5))
    state, after, metrics = stage.apply(stage.init(), before, plan())
    assert after.tensors is None and isinstance(after.payload, bytes)
    assert before.tensors is not None and before.payload is None  # the input is not mutated
    assert metrics["bytes"] == len(after.payload)
    assert metrics["raw_bytes"] == 4 * 35
    assert metrics["ratio"] == pytest.approx(140 / len(after.payload))
    assert state == {}  # no error feedback, no state
    assert (after.client_id, after.num_examples) == ("a", 3)


def test_encode_stage_is_seeded_by_round_and_client() -> None:
    stage = EncodeStage(CODECS.create("int4"))
    x = torch.rand(64, generator=torch.Generator().manual_seed(0))
    dec = CODECS.create("int4")

    def sent(client: str, seed: int) -> torch.Tensor:
        return dec.decode(stage.apply({}, update(client, w=x), plan(seed=seed))[1].payload)["w"]

    assert torch.equal(sent("a", 1), sent("a", 1))
    assert not torch.equal(sent("a", 1), sent("b", 1))
    assert not torch.equal(sent("a", 1), sent("a", 2))
    g1, g2 = derive_generator(3, "encode", "a"), derive_generator(3, "encode", "a")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_encode_stage_needs_tensors() -> None:
    stage = EncodeStage(CODECS.create("fp32"))
    with pytest.raises(PipelineError, match="without tensors"):
        stage.apply({}, ClientUpdate(client_id="a", round=1, num_examples=1, payload=b"x"), plan())


def test_error_feedback_hand_worked() -> None:
    # top-1 of 2 with fp32 values. Round 1: x=[3, 1] sends [3, 0], keeps [0, 1].
    # Round 2: x=[0, 0.5] becomes [0, 1.5]; sends it all, keeps [0, 0].
    stage = EncodeStage(
        CODECS.create("topk", fraction=0.5, value_dtype="float32"), error_feedback=True
    )
    codec = stage.codec
    state, out, metrics = stage.apply(stage.init(), update(w=torch.tensor([3.0, 1.0])), plan(1))
    assert codec.decode(out.payload)["w"].tolist() == [3.0, 0.0]
    assert state["w"].tolist() == [0.0, 1.0] and metrics["residual_norm"] == pytest.approx(1.0)
    state, out, _ = stage.apply(state, update(w=torch.tensor([0.0, 0.5])), plan(2))
    assert codec.decode(out.payload)["w"].tolist() == [0.0, 1.5]
    assert state["w"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("topk", {"fraction": 0.05}),
        ("topk", {"fraction": 0.2, "value_dtype": "float32"}),
        ("int4", {}),
        ("fp16", {}),
    ],
)
def test_error_feedback_conserves_mass(name: str, kw: dict) -> None:
    # sum over rounds of what the server decodes + the final residual == sum of inputs.
    codec = CODECS.create(name, **kw)
    g = torch.Generator().manual_seed(1)
    residual: dict[str, torch.Tensor] = {}
    inputs = torch.zeros(7, 9, dtype=torch.float64)
    sent = torch.zeros(7, 9, dtype=torch.float64)
    sent_without_feedback = torch.zeros(7, 9, dtype=torch.float64)
    for r in range(6):
        x = torch.randn(7, 9, generator=g)
        payload, residual = encode_with_feedback(
            codec, {"w": x}, residual, generator=derive_generator(r, "t")
        )
        inputs += x.double()
        sent += codec.decode(payload)["w"].double()
        plain = codec.encode({"w": x}, generator=derive_generator(r, "t"))
        sent_without_feedback += codec.decode(plain)["w"].double()
    assert torch.allclose(sent + residual["w"].double(), inputs, atol=1e-5)
    # Without feedback the lost mass is far larger than that tolerance.
    assert float((sent_without_feedback - inputs).abs().max()) > 1e-3


def test_error_feedback_keeps_absent_names_and_checks_shapes() -> None:
    codec = CODECS.create("topk", fraction=0.5)
    old = {"gone": torch.ones(2), "w": torch.zeros(2)}
    _, new = encode_with_feedback(codec, {"w": torch.tensor([1.0, 0.25])}, old, generator=None)
    assert torch.equal(new["gone"], torch.ones(2)) and new["w"].tolist() == [0.0, 0.25]
    with pytest.raises(PipelineError, match="residual"):
        encode_with_feedback(codec, {"w": torch.ones(3)}, old, generator=None)


def test_decode_stage_moves_bad_updates_to_rejected() -> None:
    codec = CODECS.create("int8", block_size=8)
    enc = EncodeStage(codec)
    good = enc.apply({}, update("a", w=torch.tensor([1.0, -1.0])), plan())[1]
    wrong_codec = ClientUpdate(
        "b", 1, 2, payload=CODECS.create("fp32").encode({"w": torch.ones(2)})
    )
    garbage = ClientUpdate("c", 1, 2, payload=b"\x10" + bytes(40))
    no_payload = ClientUpdate("d", 1, 2, tensors={"w": torch.ones(2)})
    value = CohortValue(
        updates=[good, wrong_codec, garbage, no_payload], rejected=[{"client_id": "z"}]
    )
    stage = DecodeStage(codec)
    state, out, metrics = stage.apply(stage.init(), value, plan())
    assert state is None
    assert [u.client_id for u in out.updates] == ["a"]
    assert out.updates[0].tensors["w"].tolist() == [1.0, -1.0] and out.updates[0].payload is None
    assert [(r["client_id"], r.get("reason")) for r in out.rejected] == [
        ("z", None),
        ("b", "codec_mismatch"),
        ("c", "malformed"),
        ("d", "missing_payload"),
    ]
    assert all(r["detail"] for r in out.rejected[1:])
    assert len(value.updates) == 4  # the input is not mutated
    total = len(good.payload) + len(wrong_codec.payload) + len(garbage.payload)
    assert metrics == {"bytes": total, "decoded": 1, "rejected": 3}


def test_decode_stage_caps_declared_size() -> None:
    codec = CODECS.create("topk", fraction=0.5)
    payload = codec.encode({"w": torch.ones(100)})
    _, out, _ = DecodeStage(codec, max_numel=99).apply(
        None, CohortValue([ClientUpdate("a", 1, 1, payload=payload)]), plan()
    )
    assert out.rejected[0]["reason"] == "too_large"


def test_decode_stage_enforces_max_bytes_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # The review's case: limit 1,000 bytes, a 15,640-byte update was accepted.
    codec = CODECS.create("fp32")
    big = codec.encode({"w": torch.ones(3864)})
    assert len(big) == 15_640
    small = codec.encode({"w": torch.ones(3)})
    calls: list[int] = []
    real = type(codec).decode
    monkeypatch.setattr(type(codec), "decode", lambda self, p, **kw: calls.append(len(p)) or real(self, p, **kw))
    stage = DecodeStage(codec, max_bytes=1_000)
    value = CohortValue([ClientUpdate("a", 1, 1, payload=big), ClientUpdate("b", 1, 1, payload=small)])
    _, out, metrics = stage.apply(stage.init(), value, plan())
    assert [u.client_id for u in out.updates] == ["b"]
    assert out.rejected == [{
        "client_id": "a",
        "reason": "too_large",
        "detail": "payload of 15640 bytes exceeds federation.max_update_bytes=1000",
    }]
    assert calls == [len(small)]  # the large payload was never handed to the decoder
    assert metrics == {"bytes": 15_640 + len(small), "decoded": 1, "rejected": 1}


def test_decode_stage_checks_the_expected_shapes() -> None:
    codec = CODECS.create("topk", fraction=0.5)
    shapes = {"w": (2, 2), "b": (3,)}
    ok = codec.encode({"b": torch.tensor([1.0, 0.0, -2.0]), "w": torch.ones(2, 2)})
    wrong_shape = codec.encode({"w": torch.ones(4), "b": torch.ones(3)})
    missing = codec.encode({"w": torch.ones(2, 2)})
    extra = codec.encode({"w": torch.ones(2, 2), "b": torch.ones(3), "c": torch.ones(1)})
    updates = [ClientUpdate(c, 1, 1, payload=p) for c, p in zip("abcd", [ok, wrong_shape, missing, extra])]
    stage = DecodeStage(codec, shapes={"w": [2, 2], "b": [3]})
    _, out, _ = stage.apply(stage.init(), CohortValue(updates), plan())
    assert [(r["client_id"], r["reason"]) for r in out.rejected] == [("b", "shape"), ("c", "names"), ("d", "names")]
    (decoded,) = out.updates
    assert list(decoded.tensors) == list(shapes)  # the model's order, not the sender's
    assert decoded.tensors["b"].tolist() == [1.0, 0.0, -2.0] and decoded.tensors["w"].dtype == torch.float32
    assert stage.shapes == shapes


@pytest.mark.parametrize("payload", ["text", 12, [b"x"]])
def test_decode_stage_rejects_payloads_that_are_not_bytes(payload: object) -> None:
    stage = DecodeStage(CODECS.create("fp32"), shapes={"w": (1,)}, max_bytes=100)
    _, out, metrics = stage.apply(None, CohortValue([ClientUpdate("a", 1, 1, payload=payload)]), plan())  # type: ignore[arg-type]
    assert out.rejected[0]["reason"] == "malformed" and metrics["bytes"] == 0


@pytest.mark.parametrize("max_bytes", [0, -5, 1.5, True])
def test_decode_stage_checks_its_limit(max_bytes: object) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        DecodeStage(CODECS.create("fp32"), max_bytes=max_bytes)  # type: ignore[arg-type]


def test_broadcast_round_trip_with_and_without_feedback() -> None:
    codec = CODECS.create("topk", fraction=0.5, value_dtype="float32")
    weights = {"w": torch.tensor([4.0, -1.0, 0.5, 2.0])}
    payload, residual = encode_broadcast(codec, weights, seed=3)
    assert residual is None
    assert decode_broadcast(codec, payload)["w"].tolist() == [4.0, 0.0, 0.0, 2.0]
    payload, residual = encode_broadcast(codec, weights, seed=3, residual={})
    assert residual["w"].tolist() == [0.0, -1.0, 0.5, 0.0]
    q = CODECS.create("int8")
    a = decode_broadcast(q, encode_broadcast(q, weights, seed=3)[0])["w"]
    assert torch.equal(a, decode_broadcast(q, encode_broadcast(q, weights, seed=3)[0])["w"])


def test_malformed_broadcast_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="broadcast rejected"):
        decode_broadcast(CODECS.create("fp16"), b"not a payload at all")


# ---- CompressionConfig: how the runtime builds these stages ----


@pytest.mark.parametrize(
    ("fields", "name", "kwargs"),
    [
        ({}, "fp32", {}),
        ({"upload": "int8", "block_size": 128}, "int8", {"block_size": 128}),
        ({"upload": "int4", "upload_params": {"fixed_scale": 2}}, "int4", {"fixed_scale": 2.0}),
        ({"upload": "topk", "topk_fraction": 0.05}, "topk", {"fraction": 0.05}),
        (
            {"upload": "topk", "upload_params": {"value_dtype": "float32"}},
            "topk",
            {"fraction": 0.01, "value_dtype": "float32"},
        ),
    ],
)
def test_config_builds_codec_specs(fields: dict, name: str, kwargs: dict) -> None:
    cfg = CompressionConfig(**fields)
    assert cfg.codec_spec("upload") == (name, kwargs)
    spec_name, spec_kwargs = cfg.codec_spec("upload")
    assert CODECS.create(spec_name, **spec_kwargs).name == name


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"upload": "gzip"}, "compression.upload='gzip'"),
        ({"download": "int2"}, "compression.download='int2'"),
        ({"topk_fraction": 0.0}, "topk_fraction=0.0"),
        ({"topk_fraction": 1.5}, "topk_fraction=1.5"),
        ({"upload": "int8", "block_size": 100}, "power of two"),
        ({"upload": "int8", "block_size": 4}, "power of two"),
        ({"block_size": 64}, "no codec reads it"),
        (
            {"upload": "int8", "upload_params": {"fixed_scale": 1.0}, "block_size": 64},
            "no codec reads it",
        ),
        ({"upload": "fp16", "upload_params": {"fixed_scale": 1.0}}, "does not read"),
        ({"download": "topk", "download_params": {"value_dtype": "int8"}}, "value_dtype"),
        ({"upload": "int4", "upload_params": {"fixed_scale": -1.0}}, "fixed_scale"),
        ({"codec": "fp16"}, "Extra inputs"),
    ],
)
def test_config_rejects_bad_values(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CompressionConfig(**fields)


def test_config_is_frozen_and_reports_secagg_compatibility() -> None:
    cfg = CompressionConfig(upload="topk")
    with pytest.raises(ValidationError):
        cfg.upload = "fp32"  # type: ignore[misc]
    assert not cfg.secagg_compatible
    assert CompressionConfig(upload="int8", upload_params={"fixed_scale": 1.0}).secagg_compatible
    assert not CompressionConfig(upload="int8").secagg_compatible
    assert CompressionConfig(upload="bf16").secagg_compatible
