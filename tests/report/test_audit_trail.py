"""The round audit trail records an injected rejection and an injected dropout."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from tests_support import tiny_overrides, write_lm_jsonl

from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.engine.capability import InjectedStages
from fedlm.errors import UpdateRejected
from fedlm.report.audit_trail import AUDIT_HEADER, audit_rows, norm_distribution, round_audit


class RejectOne:
    """Client transform stage that refuses to send ``client_id``'s update."""

    name: ClassVar[str] = "inject_reject"
    kind: ClassVar[str] = "transform"

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def init(self) -> None:
        return None

    def apply(self, state, value, plan):
        if value.client_id == self.client_id:
            raise UpdateRejected("injected", "test: this update is refused")
        return state, value, {}


def test_norm_distribution_by_hand() -> None:
    d = norm_distribution([1.0, 2.0, 3.0, 4.0, 10.0])
    assert d == {"n": 5, "min": 1.0, "p25": 2.0, "median": 3.0, "p75": 4.0, "max": 10.0, "mean": 4.0}
    assert norm_distribution([]) is None


def test_audit_records_injected_rejection_and_dropout(tmp_path) -> None:
    path = write_lm_jsonl(tmp_path / "five.jsonl", clients=5)
    # SecAgg+ over 5 clients, 1 of them (20%) silent in the first key phase.
    cfg = load_config(None, tiny_overrides(path, **{
        "federation.weighting": "uniform", "federation.clients_per_round": 5, "federation.rounds": 1,
        "secure_aggregation.enabled": "true", "secure_aggregation.clip_range": 0.1,
        "secure_aggregation.seed": 5, "secure_aggregation.phase_dropout": '{"advertise_keys": 0.2}'}))
    model, data = prepare(cfg)
    sim = build_engine(cfg, model, data)
    _, probe = sim.run_round(sim.init_state())
    trained = sorted(probe["clients"])
    victim = trained[0]
    sim = build_engine(cfg, model, data, extra=[InjectedStages(client=[RejectOne(victim)])])
    _, record = sim.run_round(sim.init_state())
    audit = round_audit(record)

    assert audit["cohort"] == record["cohort"] and len(audit["cohort"]) == 5
    dropped = sorted(set(record["cohort"]) - set(trained))
    assert len(dropped) == 1 and audit["dropped"] == dropped  # the injected dropout, by name
    assert audit["secagg_dropouts"]["advertise_keys"] == 1  # and the phase it left in
    # the refused client never sent its masked input: SecAgg+ counts it in that phase
    assert audit["secagg_dropouts"] == {"advertise_keys": 1, "share_keys": 0, "masked_input": 1, "consistency": 0,
                                       "unmasking": 0}
    assert [(x["client_id"], x["reason"]) for x in audit["rejected"]] == [(victim, "injected")]
    assert audit["rejected"][0]["side"] == "client" and "refused" in audit["rejected"][0]["detail"]
    assert audit["epsilon"] is None and audit["clipped_fraction"] is None  # no DP in this run
    assert audit["bytes_up"] == record["bytes_up"] > 0
    assert "seconds" not in audit  # timings stay in record["seconds"]: the rest is reproducible
    row = audit_rows([record])[0]
    assert len(row) == len(AUDIT_HEADER)
    assert row[3] == dropped[0] and row[4] == "advertise_keys: 1, masked_input: 1" and row[5] == f"{victim}: injected"


def test_run_writes_audit_with_norms_to_metrics(tmp_path) -> None:
    path = write_lm_jsonl(tmp_path / "data.jsonl", clients=3)
    cfg = load_config(None, tiny_overrides(path, **{"federation.rounds": 1, "output.report": "false"}))
    run_experiment(cfg, out_dir=tmp_path / "run")
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (r,) = [x for x in rounds if x["type"] == "round"]
    norms = r["server"]["validate"]["norms"]
    a = r["audit"]
    assert a["update_norms"]["n"] == len(norms) == 3
    assert a["update_norms"]["max"] == pytest.approx(max(norms.values()))
    assert a["dropped"] == [] and a["rejected"] == [] and a["secagg_dropouts"] is None
    text = json.dumps(a)
    assert "quick" not in text and "fox" not in text  # ids, counts and norms only, no raw text
    # time per stage: every client and server stage that ran, client stages summed over the cohort
    stages = r["seconds"]["stages"]
    assert set(stages) == {"encode", *r["server"]}  # the LoRA-aware mean is the aggregate stage here
    assert all(v >= 0 for v in stages.values())


def test_audit_records_dp_clipping_and_epsilon(tmp_path) -> None:
    path = write_lm_jsonl(tmp_path / "many.jsonl", clients=12, rows=6)
    cfg = load_config(None, tiny_overrides(path, **{
        "privacy.enabled": "true", "privacy.delta": 1e-3, "privacy.noise_seed": 1, "privacy.noise_multiplier": 1.0,
        "privacy.clip_norm": 1e-6, "federation.local_steps": 1, "eval.max_clients": 1, "output.report": "false"}))
    run_experiment(cfg, out_dir=tmp_path / "run")
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["type"] == "round"]
    # every norm is above 1e-6; a Poisson cohort can be empty, and then nothing was clipped
    assert [r["audit"]["clipped_fraction"] for r in rounds] == [1.0 if r["clients"] else None for r in rounds]
    assert any(r["clients"] for r in rounds)
    eps = [r["audit"]["epsilon"] for r in rounds]
    assert eps == [r["privacy"]["epsilon"] for r in rounds] and 0 < eps[0] < eps[1]  # spent, growing
