"""Checkpoints: no format that runs code, digests checked first, damage skipped, nothing lost."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlm.engine import checkpoint as ckpt_module
from fedlm.engine.checkpoint import ServerState, load_latest, save_checkpoint
from fedlm.engine.treefile import decode, encode
from fedlm.errors import CheckpointError


def _state(r: int) -> ServerState:
    shared = torch.arange(4.0)
    return ServerState(
        round=r,
        global_state={"w": torch.full((2, 3), float(r)), "b": torch.zeros(3, dtype=torch.bfloat16)},
        server_states={"server_opt": {"m": {"w": torch.ones(2, 3)}, "step": r}, "decode": None},
        client_states={"alice": {"local_optimizer": {"state": {0: {"exp_avg": shared, "step": torch.tensor(3.0)}},
                                                     "param_groups": [{"betas": (0.9, 0.999), "params": [0]}]},
                                 "personal": {"w": shared}}},  # two references to one tensor
        totals={"bytes_up": 10 * r, "ledger": {"history": [(1.0, 0.01)], "nan": float("nan")}},
    )


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b and type(a) is type(b)


def test_the_tree_codec_round_trips_tuples_int_keys_arrays_bytes_and_shared_tensors() -> None:
    tree = {"t": (1, "a", None), "ints": {3: "x", 7: [torch.ones(2)]}, "arr": np.arange(3, dtype=np.int32),
            "raw": b"\x00\xff", "marker_like": {"__tensor__": "not a ref"}, "f": 1.5}
    back = decode(*encode(tree))
    assert back["t"] == (1, "a", None) and list(back["ints"]) == [3, 7]
    assert isinstance(back["arr"], np.ndarray) and back["arr"].tolist() == [0, 1, 2]
    assert back["raw"] == b"\x00\xff" and back["marker_like"] == {"__tensor__": "not a ref"}
    with pytest.raises(CheckpointError, match="cannot write a set"):
        encode({"s": {1, 2}})


def test_a_checkpoint_round_trips_the_state_exactly(tmp_path: Path) -> None:
    records = [{"type": "eval", "round": 0, "eval_loss": 1.0}, {"type": "round", "round": 1}]
    save_checkpoint(tmp_path, _state(1), config_digest="cfg", data_digest="data", keep=2, records=records)
    got = load_latest(tmp_path, config_digest="cfg", data_digest="data")
    want = _state(1)
    for field in ("round", "global_state", "server_states", "client_states", "totals"):
        _same(getattr(want, field), getattr(got.state, field))
    assert got.records == records and got.damaged == ()
    assert sorted(p.name for p in (tmp_path / "round_0001").iterdir()) == [
        "MANIFEST.json", "records.jsonl", "state.json", "tensors.safetensors"]


def test_only_the_newest_keep_checkpoints_stay(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, _state(r), config_digest="cfg", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_0002", "round_0003"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "no_manifest", "edit_state"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_older_intact_one_used(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, _state(1), config_digest="cfg", keep=3)
    save_checkpoint(tmp_path, _state(2), config_digest="cfg", keep=3)
    newest = tmp_path / "round_0002"
    if damage == "truncate":
        data = (newest / "tensors.safetensors").read_bytes()
        (newest / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (newest / "tensors.safetensors").write_bytes(b"")
    elif damage == "garbage":
        (newest / "state.json").write_bytes(b"\x80not json at all")
    elif damage == "no_manifest":
        (newest / "MANIFEST.json").unlink()
    else:  # a state edited after the fact: its hash no longer matches the manifest
        tree = json.loads((newest / "state.json").read_text())
        tree["round"] = 1
        (newest / "state.json").write_text(json.dumps(tree))
    got = load_latest(tmp_path, config_digest="cfg")
    assert got.state.round == 1 and len(got.damaged) == 1 and got.damaged[0].startswith("round_0002")


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1), config_digest="cfg", keep=3)
    (tmp_path / "round_0001" / "tensors.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"every checkpoint .* is damaged"):
        load_latest(tmp_path, config_digest="cfg")


def test_the_digests_are_checked_before_anything_is_deserialised(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, _state(1), config_digest="cfg", data_digest="data", keep=2)
    opened = []
    monkeypatch.setattr(ckpt_module, "load_file", lambda *a, **k: opened.append(a))
    with pytest.raises(CheckpointError, match="different config"):
        load_latest(tmp_path, config_digest="other", data_digest="data")
    with pytest.raises(CheckpointError, match="data changed"):
        load_latest(tmp_path, config_digest="cfg", data_digest="changed")
    assert opened == []  # not one tensor file was read


def test_a_pickled_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "round_0003.pt").write_bytes(pickle.dumps({"digest": "cfg", "x": Exploit()}))
    with pytest.raises(CheckpointError, match="no longer reads pickles"):
        load_latest(tmp_path, config_digest="cfg")
    assert not marker.exists()


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, _state(1), config_digest="cfg", keep=3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_file", full)
    with pytest.raises(CheckpointError, match=r"disk is full.*--resume"):
        save_checkpoint(tmp_path, _state(2), config_digest="cfg", keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_0001"]  # no temporary folder, round 1 intact
    assert load_latest(tmp_path, config_digest="cfg").state.round == 1
