"""Deployed rounds over in-process clients: the same result as the simulator.

Everything of a deployment but Flower's transport: the server half of the simulation,
the clients' halves (each a fresh :class:`ClientNode` per message, reading only its own
file), the wire codecs and SecAgg+ over its own message types.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from deploy_support import LoopbackCourier, assert_same_records, deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.deploy.app_writer import run_config
from fedlm.deploy.federation import run_federation
from fedlm.deploy.local_data import ENROLMENT, write_client_files


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "adapter").glob("*.safetensors")))


def _deploy(config, tmp: Path, **courier_kw) -> tuple[Path, LoopbackCourier]:
    files = write_client_files(config, tmp / "data")
    rc = run_config(config, out_dir=str(tmp / "deployed"), nodes=len(files))
    nodes = {f.client_id: (rc, {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
                                "state-dir": str(tmp / "state" / f.client_id), "identity-key": f.identity,
                                "enrolment": str(tmp / "data" / ENROLMENT)}) for f in files}
    courier = LoopbackCourier(nodes, **courier_kw)
    return run_federation(courier, rc), courier


@pytest.mark.slow
def test_deployed_rounds_equal_the_simulator(tmp_path):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data))
    sim = run_experiment(config, out_dir=tmp_path / "sim")
    run_dir, courier = _deploy(config, tmp_path)
    want, got = _adapter(sim.run_dir), _adapter(run_dir)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sim_rounds = [json.loads(line) for line in (sim.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert_same_records(rounds, sim_rounds)  # the same records, field by field, but for timings
    # the SecAgg+ phases went over the wire: keys, shares, train (mask), unmask per client and round
    actions = [a for a, _ in courier.sent]
    assert actions.count("query.secagg_keys") == actions.count("query.secagg_unmask") == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["secure_aggregation"]["rounds"] == 2


@pytest.mark.slow
def test_a_client_lost_in_training_is_a_secagg_dropout(tmp_path):
    # 4 clients: SecAgg+ needs more than t = 2 survivors (a cohort of 3 cannot lose one)
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=4, rows=10)
    config = load_config(None, deploy_overrides(data, **{"federation.clients_per_round": 4}))
    files = sorted(f.client_id for f in write_client_files(config, tmp_path / "probe"))
    lost = files[-1]
    run_dir, _ = _deploy(config, tmp_path, drop={("train", 1, lost)})
    rounds = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]
    first = rounds[0]
    assert first["applied"] and first["server"]["secagg"]["survivors"] == 3
    assert first["server"]["secagg"]["dropouts"]["masked_input"] == 1
    assert any(x["client_id"] == lost and x["reason"] == "dropped" for x in first["rejected"])
    assert rounds[1]["server"]["secagg"]["survivors"] == 4  # it is back in the next round


class _ServerKilled(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_server_loses_no_completed_round(tmp_path):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data))
    files = write_client_files(config, tmp_path / "data")
    rc = run_config(config, out_dir=str(tmp_path / "deployed"), nodes=3)
    nodes = {f.client_id: (rc, {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
                                "state-dir": str(tmp_path / "state" / f.client_id)}) for f in files}

    class Dying(LoopbackCourier):  # the server process dies as round 2's key exchange starts
        def exchange(self, action, requests, *, group, **kw):
            if group == "2":
                raise _ServerKilled
            return super().exchange(action, requests, group=group, **kw)

    with pytest.raises(_ServerKilled):
        run_federation(Dying(nodes), rc)
    assert (tmp_path / "deployed" / "checkpoints" / "round_0001" / "MANIFEST.json").is_file()
    run_dir = run_federation(LoopbackCourier(nodes), {**rc, "resume": True})
    sim = run_experiment(config, out_dir=tmp_path / "sim")
    want, got = _adapter(sim.run_dir), _adapter(run_dir)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    rounds = [r["round"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "round"]
    assert rounds == [1, 2]


@pytest.mark.slow
def test_a_round_rerun_after_resume_starts_from_each_clients_earlier_state(tmp_path):
    # Each client keeps its AdamW moments across rounds, so its state matters. The server
    # dies after the clients trained round 2 (and kept their state after it), before it
    # could aggregate: the resumed run re-runs round 2, and each client must start it from
    # its state after round 1, as in an uninterrupted run.
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data, **{"federation.keep_optimizer_state": "true"}))
    files = write_client_files(config, tmp_path / "data")
    rc = run_config(config, out_dir=str(tmp_path / "deployed"), nodes=3)
    nodes = {f.client_id: (rc, {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
                                "state-dir": str(tmp_path / "state" / f.client_id)}) for f in files}

    class DyingAfterTraining(LoopbackCourier):
        def exchange(self, action, requests, *, group, **kw):
            if group == "2" and action == "query.secagg_unmask":
                raise _ServerKilled
            return super().exchange(action, requests, group=group, **kw)

    with pytest.raises(_ServerKilled):
        run_federation(DyingAfterTraining(nodes), rc)
    kept = sorted(p.name for p in (tmp_path / "state" / files[0].client_id).glob("client_state-r*.state"))
    assert kept == ["client_state-r000001.state", "client_state-r000002.state"]  # round 2 trained, not applied
    run_dir = run_federation(LoopbackCourier(nodes), {**rc, "resume": True})
    sim = run_experiment(config, out_dir=tmp_path / "sim")
    want, got = _adapter(sim.run_dir), _adapter(run_dir)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "val_fraction"), [("ditto", 0), ("finetune", 0.3)])
def test_deployed_personal_models_score_as_in_the_simulator(tmp_path, method, val_fraction):
    # Each client builds and scores its personal model on its own machine, from its own
    # state (choosing it on its own validation split); the server sees sums only, and the
    # report equals the simulator's.
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data, **{"personal.method": method, "personal.steps": 2,
                                                         "personal.val_fraction": val_fraction}))
    sim = run_experiment(config, out_dir=tmp_path / "sim")
    run_dir, _ = _deploy(config, tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    want, got = sim.summary["personal"], summary["personal"]
    assert got["method"] == method and got["clients"].keys() == want["clients"].keys()
    for cid, w in want["clients"].items():
        assert got["clients"][cid]["has_personal"] == w["has_personal"]
        assert got["clients"][cid].get("selection") == w.get("selection")
        assert ("selection" in w) == bool(val_fraction)
        for model in ("global", "personal"):
            assert got["clients"][cid][model]["eval_loss"] == pytest.approx(w[model]["eval_loss"], rel=1e-5)
    for key in ("mean", "worst_10pct", "jain"):
        w, g = want["fairness"]["personal"]["perplexity"][key], got["fairness"]["personal"]["perplexity"][key]
        assert g == pytest.approx(w, rel=1e-5)
        assert summary["fairness"]["perplexity"][key] == pytest.approx(sim.summary["fairness"]["perplexity"][key],
                                                                      rel=1e-5)
