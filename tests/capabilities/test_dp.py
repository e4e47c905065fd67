"""Client-level DP inside `fedlm run`: accounting per round, budget, sampling, weighting."""

import json
import math

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.capabilities.dp import DifferentialPrivacy
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.errors import ConfigError
from fedlm.privacy.stages import DpMeanStage, DpRound
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

N_CLIENTS = 12


@pytest.fixture
def many_clients(tmp_path):
    return write_lm_jsonl(tmp_path / "many.jsonl", clients=N_CLIENTS, rows=6)


def _dp(data, **extra):
    base = {
        "privacy.enabled": "true", "privacy.delta": 1e-3, "privacy.noise_seed": 1,
        "output.report": "false", "eval.max_clients": 1, "federation.local_steps": 1,
    }
    return load_config(None, tiny_overrides(data, **{**base, **extra}))


def _records(run_dir, kind="round"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_each_round_equals_dp_accounting_called_directly(many_clients, tmp_path, accountant):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.accountant": accountant})
    summary = run_experiment(cfg, out_dir=tmp_path / accountant).summary
    q = 3 / N_CLIENTS  # clients_per_round / N
    for r, rec in enumerate(_records(tmp_path / accountant), start=1):
        ref = PLDAccountant() if accountant == "pld" else RdpAccountant()
        ref.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(1.0)), r))
        assert rec["privacy"]["epsilon"] == pytest.approx(ref.get_epsilon(1e-3), rel=1e-9)
        assert rec["privacy"]["rounds_accounted"] == r
    p = summary["privacy"]
    assert p["accountant"] == accountant and p["delta"] == 1e-3 and p["noise_multiplier"] == 1.0
    assert p["epsilon"] == pytest.approx(_records(tmp_path / accountant)[-1]["privacy"]["epsilon"])
    assert p["epsilon_by_accountant"]["pld"] < p["epsilon_by_accountant"]["rdp"]  # PLD is tighter


def test_target_epsilon_calibrates_z_and_lands_at_or_just_under_it(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.target_epsilon": 6.0})
    p = run_experiment(cfg, out_dir=tmp_path / "cal").summary["privacy"]
    assert p["noise_multiplier_source"] == "calibrated" and p["rounds_accounted"] == 2
    assert 6.0 * 0.99 <= p["epsilon"] <= 6.0


def test_budget_stop_ends_cleanly_saves_the_adapter_and_records_why(many_clients, tmp_path):
    # z = 1, q = 0.5: epsilon is 2.69 after round 1 and 3.75 after round 2 (RDP, delta 1e-3)
    cfg = _dp(many_clients, **{
        "privacy.noise_multiplier": 1.0, "privacy.target_epsilon": 3.0, "privacy.on_budget_exhausted": "stop",
        "federation.clients_per_round": 6, "federation.rounds": 4,
    })
    run = run_experiment(cfg, out_dir=tmp_path / "stop")
    p = run.summary["privacy"]
    assert run.summary["rounds_completed"] == 1
    assert p["stopped_early"] and "round 2 would take epsilon" in p["stop_reason"]
    assert p["epsilon"] == pytest.approx(2.6865, rel=1e-3) and p["epsilon"] <= 3.0
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_poisson_cohorts_vary_and_fixed_cohorts_have_k_clients(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "federation.rounds": 3})
    run_experiment(cfg, out_dir=tmp_path / "poisson")
    fixed = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.sampling": "fixed", "federation.rounds": 1})
    run_experiment(fixed, out_dir=tmp_path / "fixed")
    assert [len(r["cohort"]) for r in _records(tmp_path / "fixed")] == [3]
    ref = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    ref.compose(dpa.SampledWithoutReplacementDpEvent(N_CLIENTS, 3, dpa.GaussianDpEvent(0.5)))
    assert _records(tmp_path / "fixed")[0]["privacy"]["epsilon"] == pytest.approx(ref.get_epsilon(1e-3))
    # Poisson: the cohort is whoever drew u < q; the record says who took part
    for rec in _records(tmp_path / "poisson"):
        assert set(rec["cohort"]) == set(rec["clients"])


def test_poisson_cohort_has_rate_q():
    class Stub(DifferentialPrivacy):
        def __init__(self):
            self.sample_rate = 0.1
            self.client_level = True
            self.config = load_config(None, ["privacy.enabled=true", "privacy.noise_multiplier=1.0"])

    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(1000)]
    sizes = [len(Stub().choose_cohort(rng, ids, ())) for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(100, abs=2)  # std of the mean: sqrt(90/200) = 0.67
    assert np.std(sizes) == pytest.approx(math.sqrt(90), rel=0.2)


def test_updates_are_clipped_and_the_server_adds_z_c_over_d(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 0.5, "privacy.clip_norm": 0.01,
                               "federation.rounds": 1, "privacy.sampling": "fixed"})
    run_experiment(cfg, out_dir=tmp_path / "clip")
    rec = _records(tmp_path / "clip")[0]
    for m in rec["clients"].values():
        assert m["dp_clip.clip_norm"] == 0.01 and m["dp_clip.pre_clip_norm"] > 0.01  # every update was clipped
    noise = rec["server"]["dp_noise"]
    assert noise["noise_std"] == pytest.approx(0.5 * 0.01 / 3)  # z C / D, D = 3 expected clients
    assert rec["server"]["dp_mean"]["denominator"] == 3.0


def test_distributed_mode_adds_shares_on_clients_and_no_server_noise(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.mode": "distributed",
                               "privacy.sampling": "fixed", "federation.rounds": 1})
    run_experiment(cfg, out_dir=tmp_path / "dist")
    rec = _records(tmp_path / "dist")[0]
    for m in rec["clients"].values():
        assert m["dp_noise_share.noise_std"] == pytest.approx(1.0 * 1.0 / math.sqrt(3))  # z C / sqrt(k)
    assert "dp_noise" not in rec["server"] and "dp_mean" in rec["server"]


def _update(cid, value, n):
    return ClientUpdate(client_id=cid, round=1, num_examples=n, tensors={"w": torch.tensor(value)})


def test_dp_mean_divides_by_the_public_denominator_with_uniform_or_capped_weights():
    plan = RoundPlan(round=1, cohort=("a", "b"), lr=0.1, local_steps=1, seed=0).with_fields(
        DpRound(clip_norm=1.0, expected_cohort_size=2.0), FixedDenominator(4.0))
    value = CohortValue(updates=[_update("a", [3.0, 4.0], 10), _update("b", [0.3, 0.4], 1)])
    _, out, m = DpMeanStage(clip_norm=1.0).apply(None, value, plan)
    # a is clipped from norm 5 to 1: (0.6, 0.8); b is kept; the sum over D = 4 (not 2)
    assert torch.allclose(out.aggregate["w"], torch.tensor([0.9, 1.2]) / 4, atol=1e-5)
    assert m["reclipped"] == 1
    value = CohortValue(updates=[_update("a", [3.0, 4.0], 10), _update("b", [0.3, 0.4], 1)])
    _, out, m = DpMeanStage(clip_norm=1.0, weighting="capped", max_weight=2.0).apply(None, value, plan)
    # weights min(n, 2) = 2 and 1
    assert torch.allclose(out.aggregate["w"], (2 * torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 4, atol=1e-5)
    assert m["total_weight"] == 3.0


def test_capped_weighting_uses_the_expected_total_weight(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.weighting": "capped",
                               "privacy.max_weight": 2, "federation.rounds": 1})
    p = run_experiment(cfg, out_dir=tmp_path / "capped").summary["privacy"]
    # every tiny client has >= 2 training examples, so D = q * N * 2 = 3 * 2
    assert p["denominator"] == pytest.approx(6.0) and p["sensitivity"] == 2.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"privacy.noise_multiplier": 1.0, "privacy.delta": 0.1}, "below 1/num_clients"),
        # even z = 1000 spends epsilon 0.24 in 10,000 rounds without amplification
        ({"privacy.target_epsilon": 0.1, "privacy.sampling": "none", "federation.rounds": 10000}, "unreachable"),
    ],
)
def test_invalid_settings_fail_before_training(many_clients, tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        run_experiment(_dp(many_clients, **extra), out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["privacy.enabled=true", "privacy.noise_multiplier=1", "privacy.delta=0.05"], "below 1/num_clients"),
        (["privacy.enabled=true", "privacy.noise_multiplier=0"], "noise_multiplier"),
        (["privacy.enabled=true", "privacy.noise_multiplier=-1"], "noise_multiplier"),
        (["privacy.enabled=true", "privacy.noise_multiplier=1", "robust.aggregator=median",
          "federation.clients_per_round=5"], "robust.aggregator='fedavg'"),
        (["audit.enabled=true", "audit.canaries=2", "data.format=instruction"], "data.format='lm'"),
    ],
)
def test_config_rejects_impossible_privacy_settings(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_resume_continues_the_privacy_ledger(many_clients, tmp_path, monkeypatch):
    from fedlm.commands.experiment import resume_experiment
    from fedlm.engine import simulation

    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "federation.rounds": 3})
    full = run_experiment(cfg, out_dir=tmp_path / "full").summary["privacy"]
    real = simulation.Simulation.run_round
    calls = {"n": 0}

    def crash_in_round_3(self, state, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real(self, state, **kw)

    monkeypatch.setattr(simulation.Simulation, "run_round", crash_in_round_3)
    with pytest.raises(RuntimeError, match="power cut"):
        run_experiment(cfg, out_dir=tmp_path / "crashed")
    monkeypatch.setattr(simulation.Simulation, "run_round", real)
    resumed = resume_experiment(tmp_path / "crashed").summary["privacy"]
    assert resumed["rounds_accounted"] == 3
    assert resumed["epsilon"] == pytest.approx(full["epsilon"], rel=1e-12)


def test_dp_sgd_run_reports_each_clients_opacus_epsilon(many_clients, tmp_path):
    from opacus.accountants import RDPAccountant

    cfg = _dp(many_clients, **{"privacy.enabled": "false", "privacy.dp_sgd.enabled": "true",
                               "privacy.dp_sgd.noise_multiplier": 1.3, "federation.rounds": 2})
    run = run_experiment(cfg, out_dir=tmp_path / "dpsgd")
    p = run.summary["privacy"]
    assert p["level"] == "sample" and p["accountant"] == "opacus-rdp"
    rounds = _records(run.run_dir)
    taken = {}
    for rec in rounds:
        for cid, m in rec["clients"].items():
            taken[cid] = taken.get(cid, 0) + m["steps"]
    assert set(p["dp_sgd"]["clients"]) == set(taken)
    from fedlm.commands.experiment import prepare

    _, data = prepare(cfg)
    for cid, info in p["dp_sgd"]["clients"].items():
        ref = RDPAccountant()
        ref.history = [(1.3, min(1.0, 2 / len(data.clients[cid].train)), taken[cid])]  # batch 2
        assert info["steps"] == taken[cid]
        assert info["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert p["epsilon"] == max(i["epsilon"] for i in p["dp_sgd"]["clients"].values())


def test_resume_refuses_a_recalibrated_noise_multiplier(many_clients, tmp_path):
    from fedlm.commands.experiment import resume_experiment

    cfg = _dp(many_clients, **{"privacy.target_epsilon": 6.0, "federation.rounds": 1})
    run = run_experiment(cfg, out_dir=tmp_path / "cal1").run_dir
    with pytest.raises(ConfigError, match=r"original federation\.rounds"):
        resume_experiment(run, overrides=["federation.rounds=3"])
