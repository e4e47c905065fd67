"""Canaries planted through the data, the audit after a run, and `fedlm audit RUN_DIR`."""

import json

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
