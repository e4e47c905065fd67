"""Heterogeneity in runs on tiny-llama: SCAFFOLD state, exact LoRA, mixed ranks, stragglers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests_support import SHARED, tiny_overrides

from fedlm.capabilities import build_engine
from fedlm.capabilities.hetero import CONTROL_KEY, RESIDUALS_FILE
from fedlm.commands.evaluate import evaluate_run
from fedlm.commands.experiment import prepare, resume_experiment, run_experiment
from fedlm.config import load_config


def sim_for(lm_data, **extra):
    cfg = load_config(None, tiny_overrides(lm_data, **extra))
    model, data = prepare(cfg)
    return build_engine(cfg, model, data)


def rounds(sim, n):
    state, records = sim.init_state(), []
    for _ in range(n):
        state, rec = sim.run_round(state)
        records.append(rec)
    return state, records


def test_scaffold_keeps_control_variates_per_client_and_on_the_server(lm_data):
    sim = sim_for(lm_data, **{"local.algorithm": "scaffold", "local.optimizer": "sgd", "federation.lr": 0.1})
    state, (r1,) = rounds(sim, 1)
    # from zero variates: c = (1/N) Σ_{i in S} c_i+  (Karimireddy et al. 2020, option II)
    cis = [state.client_states[cid][CONTROL_KEY] for cid in r1["cohort"]]
    c = state.server_states["scaffold"]["c"]
    for name, tensor in c.items():
        torch.testing.assert_close(tensor, sum(ci[name] for ci in cis) / len(sim.client_ids))
    before = {cid: state.client_states[cid][CONTROL_KEY] for cid in r1["cohort"]}
    state, r2 = sim.run_round(state)
    name = next(iter(c))
    for cid in r1["cohort"]:
        moved = not torch.equal(state.client_states[cid][CONTROL_KEY][name], before[cid][name])
        assert moved == (cid in r2["cohort"])  # only clients sampled again update their c_i
    assert r2["bytes_down"] > r1["bytes_down"]  # c travels with the adapter from round 2 on


def _errors(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["server"]["lora"]["max_error"] for r in recs if r["type"] == "round"]


def test_exact_lora_run_is_exact_folds_the_residual_and_resumes(lm_data, tmp_path):
    exact = {"aggregation.lora": "exact", "federation.rounds": 2, "output.report": "false"}
    full = run_experiment(load_config(None, tiny_overrides(lm_data, **exact)), out_dir=tmp_path / "full")
    naive = run_experiment(load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 2, "output.report": "false"})),
                           out_dir=tmp_path / "naive")
    assert max(_errors(full.run_dir)) < 1e-5 < 1e-3 < min(_errors(naive.run_dir))
    res = load_file(full.run_dir / "adapter" / RESIDUALS_FILE)
    assert res and all(r.abs().max() > 0 for r in res.values())
    # the saved residual is what fedlm eval folds back: same held-out loss as the run's own final eval
    again = evaluate_run(full.run_dir)
    for cid, m in full.summary["clients"].items():
        assert abs(again["clients"][cid]["eval_loss"] - m["final"]["eval_loss"]) < 1e-5
    # stopping after round 1 and resuming gives the same adapter and residual
    half = tmp_path / "half"
    run_experiment(load_config(None, tiny_overrides(lm_data, **{**exact, "federation.rounds": 1})), out_dir=half)
    resume_experiment(half, overrides=["federation.rounds=2"])
    for f in ("adapter_model.safetensors", RESIDUALS_FILE):
        a, b = load_file(full.run_dir / "adapter" / f), load_file(half / "adapter" / f)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixed_ranks_aggregate_to_an_adapter_of_the_target_rank(lm_data):
    sim = sim_for(lm_data, **{"lora.r": 8, "aggregation.lora": "exact", "aggregation.exact_method": "svd",
                              "resources.profiles": '[{"rank": 2}, {"rank": 4}, {"rank": 8}]'})
    state, records = rounds(sim, 2)
    ranks = {m["rank"] for r in records for m in r["clients"].values()}
    assert ranks <= {2, 4, 8} and len(ranks) > 1
    for name, t in state.global_state.items():
        assert t.shape == sim.model.shapes()[name]
        if name.endswith("lora_A.weight"):
            assert t.shape[0] == 8 and torch.isfinite(t).all()
    # round 1 starts from B = 0, so the stacked rank (2 + 4 + 8 at most per module) is cut to 8
    assert all(0 <= r["server"]["lora"]["max_error"] < 1 for r in records)


def test_ffa_keeps_a_frozen_and_out_of_every_update(lm_data):
    sim = sim_for(lm_data, **{"aggregation.lora": "ffa"})
    frozen = sim.model.frozen_lora_state()
    start = sim.init_state().global_state
    assert frozen and all(k.endswith("lora_A.weight") for k in frozen)
    assert start and all(k.endswith("lora_B.weight") for k in start)  # only B is trainable state
    state, records = rounds(sim, 2)
    assert all(not torch.equal(t, start[k]) for k, t in state.global_state.items())  # B trained
    for k, t in sim.model.frozen_lora_state().items():
        assert torch.equal(t, frozen[k])
    assert max(r["server"]["lora"]["max_error"] for r in records) < 1e-5


def test_stragglers_are_dropped_or_cut_to_the_time_budget(lm_data):
    profiles = '[{"speed": 0.5}, {"speed": 4.0}]'  # 2 steps: 4 s and 0.5 s
    _, (drop,) = rounds(sim_for(lm_data, **{"resources.profiles": profiles, "resources.time_budget": 3.0,
                                             "federation.clients_per_round": 4}), 1)
    assert {x["reason"] for x in drop["rejected"]} == {"straggler"} and len(drop["rejected"]) == 2
    sim = sim_for(lm_data, **{"resources.profiles": profiles, "resources.time_budget": 3.0,
                              "resources.straggler": "partial", "aggregation.normalize": "fednova",
                              "federation.clients_per_round": 4})
    _, (part,) = rounds(sim, 1)
    steps = {cid: m["steps"] for cid, m in part["clients"].items()}
    assert sorted(steps.values()) == [1, 1, 2, 2]  # the slow profile fits floor(3 s * 0.5) = 1 step
    n = {cid: len(sim.data.clients[cid].train) for cid in steps}
    tau_eff = sum(n[c] * steps[c] for c in steps) / sum(n.values())  # FedNova's Σ p_i τ_i
    assert abs(part["server"]["fednova"]["tau_eff"] - tau_eff) < 1e-12


EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "fedlm" / "examples" / "hetero.yaml"
DOLLY = SHARED / "dolly-fedit"


def test_hetero_example_validates():
    cfg = load_config(EXAMPLE)
    assert cfg.data.dirichlet_alpha == 0.1 and cfg.resources.ranks() == {4, 8, 16}
    assert (cfg.aggregation.lora, cfg.lora.r) == ("exact", 16)


@pytest.mark.skipif(not DOLLY.is_dir(), reason="needs ../shared/datasets/dolly-fedit")
def test_hetero_example_runs_on_tiny_llama(tmp_path):
    cfg = load_config(EXAMPLE, [f"data.path={DOLLY}", "model.name=tiny-llama", "federation.rounds=1",
                                "data.seq_len=64", "data.max_examples_per_client=8", "output.report=false"])
    model, data = prepare(cfg)
    assert data.summary()["label_tv"] > 0.5  # Dirichlet(0.1) over categories: strongly skewed
    sim = build_engine(cfg, model, data)
    _, (rec,) = rounds(sim, 1)
    assert {m["rank"] for m in rec["clients"].values()} <= {4, 8, 16}
    assert rec["server"]["lora"]["max_error"] < 1  # logged per layer every round


@pytest.mark.parametrize(
    "extra",
    [
        {"privacy.enabled": "true", "privacy.delta": 1e-3, "privacy.noise_multiplier": 1.0, "privacy.noise_seed": 1,
         "privacy.sampling": "fixed"},
        {"secure_aggregation.enabled": "true", "secure_aggregation.clip_range": 0.1, "secure_aggregation.seed": 5,
         "federation.weighting": "uniform"},
        {"robust.aggregator": "median", "federation.clients_per_round": 4},
    ],
    ids=["dp", "secagg", "median"],
)
def test_ffa_composes_with_dp_secure_and_robust_aggregation(lm_data, extra):
    # A is outside the trainable state, so clipping, noise, masks and robust statistics
    # only ever see B: the noise is not spread over (and amplified through) A.
    sim = sim_for(lm_data, **{"aggregation.lora": "ffa", "federation.local_steps": 1, **extra})
    frozen = sim.model.frozen_lora_state()
    start = sim.init_state()
    state, record = sim.run_round(start)
    assert record["applied"] and record["accepted"] >= 1
    assert set(state.global_state) == set(start.global_state) and all("lora_B" in k for k in state.global_state)
    assert any(not torch.equal(state.global_state[k], start.global_state[k]) for k in state.global_state)
    assert all(torch.equal(t, frozen[k]) for k, t in sim.model.frozen_lora_state().items())
