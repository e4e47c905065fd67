"""Secure aggregation inside a run: the secure round equals the plain one within the bound."""

import json

import pytest
import torch
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.errors import ConfigError
from fedlm.privacy.secagg.quantize import step_size

SECURE = {"secure_aggregation.enabled": "true", "secure_aggregation.clip_range": 0.1,
          "secure_aggregation.seed": 5, "output.report": "false"}


def _config(path, **extra):
    return load_config(None, tiny_overrides(path, **extra))


@pytest.mark.parametrize("weighting,extra", [
    ("uniform", {}),
    ("examples", {"secure_aggregation.max_weight": 64}),
])
def test_secure_round_equals_plain_round_within_quantisation_bound(lm_data, weighting, extra):
    common = {"federation.weighting": weighting, "federation.clients_per_round": 4, "federation.rounds": 1}
    plain_cfg = _config(lm_data, **common)
    secure_cfg = _config(lm_data, **common, **SECURE, **extra)
    model, data = prepare(plain_cfg)
    plain = build_engine(plain_cfg, model, data)
    secure = build_engine(secure_cfg, model, data)
    start, start_secure = plain.init_state(), secure.init_state()  # the same global adapter
    want, _ = plain.run_round(start)
    got, record = secure.run_round(start_secure)
    # The mean of decoded values differs from the true mean by < one step per coordinate
    # (sum error < total_weight * step, divided by total_weight); fedavg's server lr is 1.
    bound = step_size(bits=16, clip=0.1)
    for name, w in want.global_state.items():
        diff = (got.global_state[name] - w).abs().max().item()
        assert diff <= bound * 1.01 + 1e-7, name
    moved = sum((got.global_state[k] - start.global_state[k]).abs().sum().item() for k in want.global_state)
    assert moved > 0
    figures = record["server"]["secagg"]
    assert figures["cohort"] == figures["survivors"] == 4 and not figures["aborted"]
    total_weight = record["server"]["mean"]["total_weight"]
    examples = sum(len(data.clients[c].train) for c in record["cohort"])
    assert total_weight == (4 if weighting == "uniform" else examples)
    # bytes_up counts exactly the masked uploads: one uint32 per value plus a header each
    masked = [m["secagg_mask.bytes"] for m in record["clients"].values()]
    assert record["bytes_up"] == sum(masked)
    values = sum(t.numel() for t in start.global_state.values())
    assert all(4 * (values + 1) < b < 4 * (values + 1) + 64 for b in masked)


def test_dropouts_at_each_phase_and_abort_then_continue(tmp_path):
    path = write_lm_jsonl(tmp_path / "five.jsonl", clients=5)
    # 5 clients, complete graph k = 4, t = 3: the server needs more than 3 live clients.
    five = {"federation.weighting": "uniform", "federation.clients_per_round": 5}
    model, data = prepare(_config(path, **five))
    for phase, in_sum, trained in [("advertise_keys", 4, 4), ("share_keys", 4, 4),
                                   ("masked_input", 4, 4), ("unmasking", 5, 5)]:
        cfg = _config(path, **SECURE, **five, **{"secure_aggregation.phase_dropout": f'{{"{phase}": 0.2}}'})
        sim = build_engine(cfg, model, data)
        _, record = sim.run_round(sim.init_state())
        figures = record["server"]["secagg"]
        assert figures["dropouts"][phase] == 1 and figures["survivors"] == in_sum, phase
        assert record["applied"] and record["server"]["mean"]["total_weight"] == in_sum
        assert len(record["clients"]) == trained  # who drops before masking does not train

    # 2 of 5 silent before masking: 3 live clients is not more than t = 3, so every round
    # aborts, the global adapter never moves, and the run still completes both rounds.
    cfg = _config(path, **SECURE, **{"federation.weighting": "uniform", "federation.clients_per_round": 5,
                                      "federation.rounds": 2, "federation.on_too_few_updates": "abort",
                                      "secure_aggregation.phase_dropout": '{"masked_input": 0.4}'})
    result = run_experiment(cfg, out_dir=tmp_path / "abort")
    sa = result.summary["secure_aggregation"]
    assert result.summary["rounds_completed"] == 2
    assert sa["aborted_rounds"] == [1, 2] and sa["survivors"] == 0
    assert result.summary["final"]["eval_loss"] == pytest.approx(result.summary["initial"]["eval_loss"])
    rounds = [json.loads(x) for x in (tmp_path / "abort" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["type"] == "round"]
    for r in rounds:
        assert not r["applied"] and r["server"]["secagg"]["aborted"]
        assert r["server"]["secagg"]["abort"]["reason"] == "below_threshold"
        assert "mean" not in r["server"]  # nothing was aggregated


def test_client_side_norm_bound_composes(lm_data):
    cfg = _config(lm_data, **SECURE, **{"federation.weighting": "uniform", "federation.rounds": 1,
                                        "robust.aggregator": "norm_bound", "robust.norm_bound_client_side": "true",
                                        "robust.norm_bound": 1e-3})
    model, data = prepare(cfg)
    sim = build_engine(cfg, model, data)
    start = sim.init_state()
    state, record = sim.run_round(start)
    for m in record["clients"].values():
        assert m["norm_bound_clip.clipped"] == 1.0 and m["secagg_mask.norm"] <= 1e-3 * (1 + 1e-5)
    step_norm = torch.cat([(state.global_state[k] - start.global_state[k]).flatten() for k in start.global_state]).norm()
    # the mean of three updates of norm <= 1e-3, plus quantisation error below one step per value
    values = sum(t.numel() for t in start.global_state.values())
    assert step_norm.item() <= 1e-3 + step_size(bits=16, clip=0.1) * values**0.5


@pytest.mark.parametrize("extra,needle", [
    ({"robust.aggregator": "median"}, "client-side norm bounding"),
    ({"robust.aggregator": "krum"}, "client-side norm bounding"),
    ({"compression.upload": "topk"}, "fixed_scale"),
    ({"compression.upload": "int8"}, "fixed_scale"),
    ({"federation.weighting": "examples"}, "max_weight"),
    ({"federation.clients_per_round": 2}, "clients_per_round >= 3"),
])
def test_config_rejects_what_needs_individual_updates(lm_data, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        _config(lm_data, **{"federation.weighting": "uniform", **SECURE, **extra})


def test_config_accepts_what_composes(lm_data):
    for extra in ({"compression.upload": "int8", "compression.upload_params": '{"fixed_scale": 0.001}'},
                  {"compression.upload": "fp16"},
                  {"robust.aggregator": "norm_bound", "robust.norm_bound_client_side": "true", "robust.norm_bound": 1.0}):
        cfg = _config(lm_data, **{"federation.weighting": "uniform", **SECURE, **extra})
        assert cfg.secure_aggregation.enabled


def test_weight_above_max_weight_is_refused_before_training(lm_data):
    cfg = _config(lm_data, **SECURE, **{"secure_aggregation.max_weight": 2})
    model, data = prepare(cfg)
    with pytest.raises(ConfigError, match="max_weight=2"):
        build_engine(cfg, model, data)


def test_composes_with_distributed_dp(lm_data):
    # DP's client-side clip and noise share run before encode and mask; the server divides
    # the secure sum by DP's public denominator instead of the realised weight.
    cfg = _config(lm_data, **SECURE, **{"federation.rounds": 1, "privacy.enabled": "true",
                                        "privacy.mode": "distributed", "privacy.noise_multiplier": 0.5,
                                        "privacy.clip_norm": 0.01, "privacy.sampling": "none",
                                        "privacy.noise_seed": 1, "privacy.delta": 0.01})
    model, data = prepare(cfg)
    sim = build_engine(cfg, model, data)
    names = [s.name for s in sim.client_pipeline.stages]
    assert names.index("dp_clip") < names.index("encode") < names.index("secagg_mask")
    _, record = sim.run_round(sim.init_state())
    assert record["applied"] and record["server"]["secagg"]["survivors"] == 3
    assert record["server"]["mean"]["denominator"] == pytest.approx(3.0)


def test_adaptive_clipping_is_rejected(lm_data):
    with pytest.raises(ConfigError, match="adaptive_clipping"):
        _config(lm_data, **SECURE, **{"privacy.enabled": "true", "privacy.mode": "distributed",
                                      "privacy.noise_multiplier": 0.5, "privacy.adaptive_clipping": "true",
                                      "privacy.clipped_count_stddev": 1.0, "privacy.delta": 0.01})


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_discrete_distributed_dp_runs_over_the_secagg_ring(lm_data, mechanism):
    # clip -> fp32 -> rotate, round, discrete noise share (ddp_encode) -> mask mod 2^20;
    # the server unmasks the sum in the ring, decodes it and divides by DP's public D.
    cfg = _config(lm_data, **SECURE, **{"federation.rounds": 1, "federation.weighting": "uniform",
                                        "privacy.enabled": "true", "privacy.mode": mechanism,
                                        "privacy.target_epsilon": 8.0, "privacy.sampling": "none",
                                        "privacy.delta": 0.01, "secure_aggregation.modulus_bits": 20,
                                        "secure_aggregation.bits": 1})
    model, data = prepare(cfg)
    sim = build_engine(cfg, model, data)
    client = [s.name for s in sim.client_pipeline.stages]
    server = [s.name for s in sim.server_pipeline.stages]
    assert client == ["dp_clip", "encode", "ddp_encode", "secagg_mask"]
    assert server[:4] == ["secagg", "ddp_decode", "validate", "mean"] and "dp_noise" not in server
    start = sim.init_state()
    state, record = sim.run_round(start)
    assert record["applied"] and record["server"]["secagg"]["survivors"] == 3
    assert record["server"]["mean"]["denominator"] == pytest.approx(3.0)
    values = sum(t.numel() for t in start.global_state.values())
    padded = 1 << (values - 1).bit_length()
    masked = [m["secagg_mask.bytes"] for m in record["clients"].values()]
    assert all(3 * (padded + 1) < b < 3 * (padded + 1) + 64 for b in masked)  # 20 bits: 3 bytes a value
    assert any(not torch.equal(state.global_state[k], start.global_state[k]) for k in start.global_state)


def test_central_dp_noise_covers_the_norm_after_int8_and_secagg_rounding(lm_data):
    cfg = _config(lm_data, **SECURE, **{"federation.rounds": 1, "federation.weighting": "uniform",
                                        "privacy.enabled": "true", "privacy.noise_multiplier": 1.0,
                                        "privacy.clip_norm": 0.05, "privacy.sampling": "none", "privacy.delta": 0.01,
                                        "compression.upload": "int8",
                                        "compression.upload_params": '{"fixed_scale": 0.1}'})
    model, data = prepare(cfg)
    sim = build_engine(cfg, model, data)
    values = sum(t.numel() for t in sim.init_state().global_state.values())
    margin = values**0.5 * (0.1 / 127 + step_size(bits=16, clip=0.1)) * (1 + 2**-7)
    _, record = sim.run_round(sim.init_state())
    noise = record["server"]["dp_noise"]
    assert noise["noise_std"] == pytest.approx(1.0 * (0.05 + margin) / 3, rel=1e-6)  # z (C + margin) / D
