"""A node's files: no pickle, a checksum, mode 0600; damage is reported, never half read."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from deploy_support import deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.config.loader import dump_config
from fedlm.deploy import node_state, wire
from fedlm.deploy.client_node import ClientNode
from fedlm.deploy.local_data import write_client_files
from fedlm.errors import CheckpointError

DEPLOY_SRC = Path(__file__).resolve().parents[2] / "src" / "fedlm" / "deploy"


def test_no_module_of_deploy_uses_pickle():
    for path in DEPLOY_SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|dill)\b", text, re.M), path
        assert "torch.load(" not in text and "pickle.load" not in text, path


def test_a_state_tree_round_trips_exactly_with_mode_0600(tmp_path):
    old = os.umask(0)  # whatever the umask, the file is private
    try:
        tree = {"local_optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
                                    "param_groups": [{"lr": 0.01, "params": [0]}]},
                "c": np.arange(4, dtype=np.float32), "key": b"\x00\x01", "pair": (1, "x"), "none": None}
        path = tmp_path / "s.state"
        node_state.write_tree(path, tree, kind="client_state")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    back = node_state.read_tree(path, kind="client_state")
    assert torch.equal(back["local_optimizer"]["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["pair"] == (1, "x") and back["key"] == b"\x00\x01" and back["none"] is None
    assert np.array_equal(back["c"], np.arange(4, dtype=np.float32)) and 0 in back["local_optimizer"]["state"]
    with pytest.raises(CheckpointError, match="holds no examples"):
        node_state.read_tree(path, kind="examples")


def test_every_damage_is_caught_before_anything_is_parsed(tmp_path):
    data = node_state.tree_bytes({"w": torch.arange(6.0), "n": 1}, kind="client_state")
    import random

    rng = random.Random(3)
    for i in range(300):  # a flipped bit, a cut or a pickle in its place: always CheckpointError
        bad = bytearray(data)
        if i % 3 == 0:
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        elif i % 3 == 1:
            bad = bad[:rng.randrange(len(bad))]
        else:
            bad = bytearray(b"\x80\x04\x95" + bytes(rng.randrange(256) for _ in range(60)))
        with pytest.raises(CheckpointError):
            node_state.tree_from_bytes(bytes(bad), kind="client_state")


@pytest.fixture
def node(tmp_path):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data, **{"secure_aggregation.enabled": "false"}))
    f = write_client_files(config, tmp_path / "split")[0]
    rc = {"fedlm-config": dump_config(config)}
    nc = {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
          "state-dir": str(tmp_path / "state")}
    return lambda: ClientNode(rc, nc)


def test_node_files_are_private_and_a_damaged_examples_cache_is_rebuilt(node, tmp_path, caplog):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "client_state-r000001.pkl").write_bytes(b"\x80\x04")  # an older fedlm's pickle
    first = node()
    train = first.data().train
    first.mark("train", 1)
    first.save_state({"w": torch.ones(2)}, 1)
    for p in (tmp_path / "state").iterdir():
        if p.is_file():
            assert p.stat().st_mode & 0o777 == 0o600, p
    assert not list((tmp_path / "state").glob("*.pkl"))  # removed unread
    cache = next((tmp_path / "state").glob("examples-*.state"))
    cache.write_bytes(cache.read_bytes()[:-5])  # damaged
    from fedlm.deploy import client_node

    client_node._DATA.clear()  # a fresh process
    with caplog.at_level("WARNING", logger="fedlm.deploy.client_node"):
        assert node().data().train == train  # reported, then prepared again from the data file
    assert "is damaged" in caplog.text and node_state.read_tree(cache, kind="examples")["train"] == train


def test_a_damaged_client_state_is_that_clients_failure_not_a_fresh_start(node, tmp_path):
    n = node()
    n.save_state({"w": torch.ones(2)}, 1)
    assert torch.equal(n.load_state(2)["w"], torch.ones(2))
    path = tmp_path / "state" / "client_state-r000001.state"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        n.load_state(2)
    # in a round, the client sends a failure naming the reason instead of training from nothing
    from fedlm.stages import RoundPlan

    sim = n._engine({"clients": {n.client_id: {"train": len(n.data().train), "heldout": 1, "chars": 1,
                                                "labels": {}}}, "format": "lm"})
    from fedlm.compression.stages import encode_broadcast

    down, _ = encode_broadcast(sim.down_codec, sim.model.get_state(), seed=1)
    plan = RoundPlan(round=2, cohort=(n.client_id,), lr=0.01, local_steps=1, seed=1)
    fields = {**wire.plan_to_fields(plan), "broadcast": down,
              "meta": json.dumps({"clients": {n.client_id: {"train": len(n.data().train), "heldout": 1, "chars": 1,
                                                            "labels": {}}}, "format": "lm"}).encode()}
    out = wire.outcome_from_fields(node().train(fields), expect=n.client_id)
    assert out.update is None and out.failure["reason"] == "damaged_state"
    assert path.is_file()  # kept for the operator; the error names it
