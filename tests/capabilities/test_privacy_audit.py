"""Canaries planted through the data, the audit after a run, and `fedlm audit RUN_DIR`."""

import json

import pytest
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.capabilities import chain_hooks
from fedlm.capabilities.privacy_audit import canary_hook, planted_canaries
from fedlm.cli.main import main
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config


def _cfg(data, **extra):
    base = {"audit.enabled": "true", "audit.canaries": 2, "audit.canary_repeats": 3, "audit.candidates": 20,
            "audit.mia_examples": 16, "output.report": "false", "eval.max_clients": 1,
            "federation.local_steps": 1, "federation.rounds": 1}
    return load_config(None, tiny_overrides(data, **{**base, **extra}))


def test_canaries_go_into_the_chosen_clients_rows_only(lm_data):
    cfg = _cfg(lm_data, **{"audit.canary_clients": "[alpha, gamma]"})
    rows = {c: [{"text": f"{c} text {i}"} for i in range(4)] for c in ("alpha", "beta", "gamma", "delta")}
    out = canary_hook(cfg)(rows)
    canaries = planted_canaries(cfg)
    # canary 0 -> alpha, canary 1 -> gamma (round robin over the listed clients), 3 copies each
    assert [r["text"] for r in out["alpha"]].count(canaries[0].text) == 3
    assert [r["text"] for r in out["gamma"]].count(canaries[1].text) == 3
    assert out["beta"] == rows["beta"] and out["delta"] == rows["delta"]
    assert [r for r in out["alpha"] if r["text"] != canaries[0].text] == rows["alpha"]  # order kept
    assert all(set(r) == {"text"} for rs in out.values() for r in rs)
    assert chain_hooks(None, None) is None


def test_audit_runs_after_training_and_fedlm_audit_reproduces_it(tmp_path):
    data = write_lm_jsonl(tmp_path / "d.jsonl", clients=12, rows=6)
    cfg = _cfg(data, **{"privacy.enabled": "true", "privacy.noise_multiplier": 1.0, "privacy.delta": 1e-3})
    run = run_experiment(cfg, out_dir=tmp_path / "run")
    audit = run.summary["audit"]
    assert len(audit["canaries"]) == 2 and audit["candidates"] == 20
    for c in audit["canaries"]:
        assert 0.0 <= c["exposure"] <= audit["exposure_ceiling"] + 1e-12
        assert c["client"] is not None  # the holder is named
    assert 0.0 <= audit["mia_auc"] <= 1.0 and audit["members"] == 16 and audit["nonmembers"] == 16

    assert main(["audit", str(run.run_dir)]) == 0
    again = json.loads((run.run_dir / "audit.json").read_text())
    assert [c["exposure"] for c in again["canaries"]] == [c["exposure"] for c in audit["canaries"]]
    assert again["mia_auc"] == audit["mia_auc"]
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["audit"]["epsilon"] == summary["privacy"]["epsilon"] > 0  # next to epsilon


# -- the client-level one-run audit (privacy.audit) ---------------------------------------
ONE_RUN = {"privacy.audit.enabled": "true", "privacy.audit.canaries": 128, "privacy.delta": 1e-5,
           "output.report": "false", "eval.max_clients": 1, "federation.local_steps": 1,
           "federation.clients_per_round": 5, "federation.rounds": 3}
DP = {"privacy.enabled": "true", "privacy.sampling": "none"}


def _audited(tmp_path, name, **extra):
    """A tiny run with 128 canary clients; the run's key is fixed so the test is reproducible."""
    from fedlm.privacy import sampling

    data = write_lm_jsonl(tmp_path / "five.jsonl", clients=5, rows=4)
    sampling.save_key(tmp_path / name, bytes(range(32)))
    cfg = load_config(None, tiny_overrides(data, **{**ONE_RUN, **extra}))
    return run_experiment(cfg, out_dir=tmp_path / name)


def test_audited_bound_without_dp_is_well_above_the_bound_with_dp(tmp_path):
    plain = _audited(tmp_path, "plain").summary["privacy"]
    private = _audited(tmp_path, "dp", **DP, **{"privacy.noise_multiplier": 5.0}).summary["privacy"]
    assert plain["epsilon"] is None and plain["audit"]["epsilon_reported"] is None
    assert plain["audit"]["epsilon_lower_bound"] > 2.0  # the canaries' directions are plain to see
    assert private["audit"]["epsilon_lower_bound"] < 0.25 * plain["audit"]["epsilon_lower_bound"]
    for a in (plain["audit"], private["audit"]):
        assert a["canaries"] == 128 and 0 < a["included"] < 128 and a["confidence"] == 0.95


@pytest.mark.parametrize("extra", [
    {"privacy.noise_multiplier": 1.0},
    {"privacy.noise_multiplier": 1.0, "privacy.mode": "ddgauss", "secure_aggregation.enabled": "true",
     "secure_aggregation.seed": 5, "secure_aggregation.modulus_bits": 24, "secure_aggregation.bits": 1,
     "federation.weighting": "uniform"},
], ids=["central", "ddgauss"])
def test_audited_bound_never_exceeds_the_reported_epsilon(tmp_path, extra):
    from fedlm.capabilities.privacy_audit import client_level_audit
    from fedlm.report.html import write_report

    run = _audited(tmp_path, "run", **DP, **extra)
    p = run.summary["privacy"]
    assert 0 < p["audit"]["epsilon_lower_bound"] <= p["epsilon"] and not p["audit"]["flag"]
    assert p["audit"]["epsilon_reported"] == p["epsilon"]
    again = client_level_audit(run.run_dir)  # what `fedlm audit` recomputes from private/audit.json
    assert again["epsilon_lower_bound"] == pytest.approx(p["audit"]["epsilon_lower_bound"])
    assert client_level_audit(run.run_dir, confidence=0.5)["epsilon_lower_bound"] >= again["epsilon_lower_bound"]
    write_report(run.run_dir)
    assert "audited epsilon (lower bound, 95% confidence)" in (run.run_dir / "report.html").read_text()


def test_a_mechanism_that_adds_no_noise_but_reports_epsilon_is_flagged(tmp_path, monkeypatch):
    from fedlm.privacy.stages import CentralNoiseStage

    monkeypatch.setattr(CentralNoiseStage, "apply", lambda self, state, value, plan: (state, value, {}))  # noise off
    p = _audited(tmp_path, "broken", **DP, **{"privacy.noise_multiplier": 5.0}).summary["privacy"]
    a = p["audit"]
    assert p["epsilon"] < 2.0  # what the broken run still claims
    assert a["epsilon_lower_bound"] > p["epsilon"] and a["flag"] and "broken" in a["verdict"]
