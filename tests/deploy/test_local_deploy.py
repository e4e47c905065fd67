"""A real deployment on loopback: flower-superlink + flower-supernode processes, TLS on,
SuperNode authentication on (per-run keys, allow-listed), secure aggregation on.

Each SuperNode runs ``--isolation process`` beside one long-lived fedlm worker
(``fedlm.deploy.worker``), so a message costs Flower's polling, not a Python start-up with
torch; rounds are as few as each assertion needs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from deploy_support import deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.commands.experiment import run_experiment
from fedlm.deploy.credentials import write_node_key
from fedlm.deploy.launcher import LocalFederation

pytestmark = [pytest.mark.slow, pytest.mark.deploy, pytest.mark.timeout(600)]
# A loaded 2-core machine: generous reply timeouts (a live node answers in seconds).
TIMEOUTS = {"deploy.floor_s": 90, "deploy.train_s": 120}


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "adapter").glob("*.safetensors")))


def _config(tmp_path: Path, clients: int = 3, **extra):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=clients, rows=10)
    return load_config(None, deploy_overrides(data, **{**TIMEOUTS, **extra}))


def test_a_killed_supernode_leaves_a_completed_round_and_rejoins(tmp_path):
    # 4 nodes: SecAgg+ needs more than t = 2 survivors (a cohort of 3 cannot lose one).
    # The killed node's train message waits until the SuperLink marks it offline (two
    # missed 30 s heartbeats, ~60 s) or its timeout (floor_s + train_s = 60 s); only then
    # does the SuperLink let the restarted node in, so round 1 ends about when it is back.
    # 40 local steps keep a node inside "train" for about a second (two steps would be over
    # in tens of milliseconds, between two looks at its progress file on an idle machine).
    config = _config(tmp_path, clients=4, **{"federation.clients_per_round": 4, "federation.rounds": 3,
                                             "federation.local_steps": 40, "deploy.floor_s": 45,
                                             "deploy.train_s": 15, "eval.every": 100})
    with LocalFederation(config, tmp_path / "work", tmp_path / "deployed", nodes=4) as fed:
        run = fed.submit()
        progress = fed.work / "nodes" / "node-2" / "progress.json"
        _wait_until(lambda: _read_json(progress) == {"phase": "train", "round": 1}, "node 2 never started training",
                    poll_s=0.01)
        fed.procs["node-2"].stop(hard=True)  # killed mid-round
        _wait_until(lambda: _logged_rounds(tmp_path / "deployed"), "round 1 never completed")
        fed.restart_node(2)  # the organisation restarts it (let in once its old session expired)
        summary = fed.wait(run)
    assert summary["rounds_completed"] == 3
    first, *later = _logged_rounds(tmp_path / "deployed")
    assert first["applied"] and first["server"]["secagg"]["survivors"] == 3
    assert first["server"]["secagg"]["dropouts"]["masked_input"] == 1
    # It rejoins in a later round: round 2 may start before it is back online (then it is a
    # key-phase dropout of round 2), round 3 cannot.
    back = [r for r in later if r["server"]["secagg"]["survivors"] == 4]
    assert back and all(r["applied"] for r in later)
    assert fed.clients[2].client_id in back[0]["clients"]  # the restarted node trained again


def test_a_killed_server_resumes_from_its_last_checkpoint(tmp_path):
    # Clients keep their AdamW moments across rounds, so the resumed run equals an
    # uninterrupted one only if the clients' own state resumes with the server's: killed
    # after round 1's checkpoint, the resumed run trains round 2 from each client's state.
    config = _config(tmp_path, **{"federation.rounds": 2, "federation.keep_optimizer_state": "true",
                                  "output.checkpoint_every": 1, "eval.every": 100})
    # It is also the test that three SuperNodes give the simulator's adapter, bit for bit.
    work, run_dir = tmp_path / "work", tmp_path / "deployed"
    with LocalFederation(config, work, run_dir, nodes=3) as fed:
        fed.submit()
        _wait_until(lambda: (run_dir / "checkpoints" / "round_0001" / "MANIFEST.json").is_file(), "no checkpoint of round 1")
        assert "https://" in fed.procs["superlink"].log.read_text()  # TLS on
        fed.procs["superlink"].stop(hard=True)  # the coordinator dies, with the ServerApp it runs
        fed.procs["run"].stop(hard=True)
    assert not (run_dir / "summary.json").exists()
    with LocalFederation(config, work, run_dir, nodes=3, resume=True) as fed:
        summary = fed.run()
        assert "worker" in fed.procs  # one warm ClientApp process serves the three SuperNodes
    assert all(not p.alive() for p in fed.procs.values())  # it stopped everything it started
    assert summary["rounds_completed"] == 2 and summary["engine"] == "flower"
    assert summary["secure_aggregation"]["survivors"] == 6
    assert [r["round"] for r in _logged_rounds(run_dir)] == [1, 2]  # none lost, none twice
    sim = run_experiment(config, out_dir=tmp_path / "sim")
    want, got = _adapter(sim.run_dir), _adapter(run_dir)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_unregistered_and_unauthenticated_nodes_are_refused(tmp_path):
    config = _config(tmp_path)
    with LocalFederation(config, tmp_path / "work", tmp_path / "deployed", nodes=3, start_nodes=False,
                         isolation="subprocess") as fed:  # no ClientApp runs: no worker needed
        stranger = write_node_key(tmp_path / "stranger", "key")  # a valid key the SuperLink never allow-listed
        rogue = fed.start_node(0, fed.clients[0], key=stranger, name="stranger")
        anonymous = fed.start_node(1, fed.clients[1], auth=False, name="anonymous")  # no key at all
        deadline = time.monotonic() + 180
        while (rogue.alive() or anonymous.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not rogue.alive() and rogue.popen.returncode != 0  # the SuperNode gave up: refused
        assert not anonymous.alive() and anonymous.popen.returncode != 0
        assert "Failed to activate SuperNode" in rogue.log.read_text()
        assert "All SuperNodes must be registered" in anonymous.log.read_text()
        assert "No SuperNode found with the given public key" in fed.procs["superlink"].log.read_text()
        listed = json.loads(fed.flwr("supernode", "list", "fedlm-local", "--format", "json"))
    statuses = [node.get("status") for node in _listed_nodes(listed)]
    assert statuses and "online" not in statuses  # the registered keys are known, none is connected


def _listed_nodes(listed: dict) -> list[dict]:
    """The node entries of ``flwr supernode list --format json`` (a list under some key)."""
    return next((v for v in listed.values() if isinstance(v, list)), [])


def _wait_until(ready, failure: str, wait_s: float = 240.0, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + wait_s  # below pytest-timeout's 300 s, so the failure names itself
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(failure)
        time.sleep(poll_s)


def _logged_rounds(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [r for r in map(_loads, lines) if r and r.get("type") == "round"]


def _loads(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:  # a line being written
        return None


def _read_json(path: Path) -> object:
    """The file's JSON, or None while it cannot be read (being replaced)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
