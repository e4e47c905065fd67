"""A deployed run against hostile nodes: malformed replies and replayed SecAgg+ keys are
that node's dropout, logged and audited, never the end of the federation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from deploy_support import LoopbackCourier, deploy_overrides
from tests_support import load_config, write_lm_jsonl

from fedlm.deploy import wire
from fedlm.deploy.app_writer import run_config
from fedlm.deploy.federation import run_federation
from fedlm.deploy.local_data import ENROLMENT, write_client_files
from fedlm.deploy.secagg_remote import KEYS

# One malformation per round: each is what a broken or hostile ClientApp could send.
MALFORMED = [
    ("not JSON", lambda f: {**f, "meta": b"{not json"}),
    ("a tensor the model does not have", lambda f: {
        **f, "meta": f["meta"].replace(b'"has_tensors": false', b'"has_tensors": true'),
        "tensors": wire.tensors_to_bytes({"model.embed_tokens.weight": torch.zeros(3, 3)})}),
    ("another client", lambda f: {**f, "meta": f["meta"].replace(b'"client_id": "', b'"client_id": "x')}),
    ("a lie about its examples", lambda f: {**f, "meta": f["meta"].replace(b'"num_examples": ', b'"num_examples": 9')}),
    ("another round", lambda f: {**f, "meta": f["meta"].replace(b'"round": ', b'"round": 7')}),
]


def _nodes(config, tmp: Path, *, identities: bool = False) -> tuple[dict, dict]:
    files = write_client_files(config, tmp / "data")
    rc = run_config(config, out_dir=str(tmp / "deployed"), nodes=len(files))
    nodes = {}
    for f in files:
        nc = {"data-path": f.file, "client-id": f.client_id, "client-index": f.client_index,
              "state-dir": str(tmp / "state" / f.client_id)}
        if identities:
            nc.update({"identity-key": f.identity, "enrolment": str(tmp / "data" / ENROLMENT)})
        nodes[f.client_id] = (rc, nc)
    return rc, nodes


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_node_sending_malformed_replies_every_round_is_a_logged_dropout(tmp_path, caplog):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=3, rows=10)
    config = load_config(None, deploy_overrides(data, **{"secure_aggregation.enabled": "false",
                                                         "federation.rounds": len(MALFORMED), "eval.every": 100}))
    rc, nodes = _nodes(config, tmp_path)
    bad = sorted(nodes)[1]

    class Hostile(LoopbackCourier):
        def exchange(self, action, requests, *, group, **kw):
            got = super().exchange(action, requests, group=group, **kw)
            if bad in got.replies and action == "train":
                got.replies[bad] = MALFORMED[int(group) - 1][1](got.replies[bad])
            elif bad in got.replies and action == "evaluate":
                got.replies[bad] = {"meta": b'{"client_id": "%s", "loss_sum": -1}' % bad.encode()}
            return got

    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.federation"):
        run_dir = run_federation(Hostile(nodes), rc)
    rounds = [r for r in _records(run_dir) if r["type"] == "round"]
    assert [r["round"] for r in rounds] == list(range(1, len(MALFORMED) + 1))  # every round ran
    for r, (what, _) in zip(rounds, MALFORMED):
        rejected = r["audit"]["rejected"]
        assert [x["client_id"] for x in rejected] == [bad], what
        assert rejected[0]["reason"] == "unreadable" and rejected[0]["side"] == "transport", what
        assert r["applied"] and r["accepted"] == 2 and set(r["clients"]) == set(nodes) - {bad}, what  # none lost
    assert caplog.text.count(f"client {bad!r} sent an unreadable reply") == len(MALFORMED)
    final = [r for r in _records(run_dir) if r["type"] == "eval"][-1]
    assert bad in final["missing"] and set(final["clients"]) == set(nodes) - {bad}  # its bad sums are not counted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == len(MALFORMED)


@pytest.mark.slow
def test_a_node_replaying_another_nodes_keys_is_dropped_and_the_other_is_not(tmp_path, caplog):
    # 4 clients: SecAgg+ survives one dropout (t = 2 of 3 neighbours)
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=4, rows=10)
    config = load_config(None, deploy_overrides(data, **{"federation.clients_per_round": 4, "eval.every": 100}))
    rc, nodes = _nodes(config, tmp_path, identities=True)
    thief, victim = sorted(nodes)[0], sorted(nodes)[2]

    class Replaying(LoopbackCourier):  # the thief sends the victim's signed AdvertiseKeys as its own reply
        def exchange(self, action, requests, *, group, **kw):
            got = super().exchange(action, requests, group=group, **kw)
            if action == KEYS and thief in got.replies and victim in got.replies:
                got.replies[thief] = dict(got.replies[victim])
            return got

    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.secagg_remote"):
        run_dir = run_federation(Replaying(nodes), rc)
    rounds = [r for r in _records(run_dir) if r["type"] == "round"]
    assert len(rounds) == 2
    for r in rounds:
        assert {"client_id": thief, "reason": "secagg_wrong_sender"}.items() <= r["audit"]["rejected"][0].items()
        assert r["applied"] and r["server"]["secagg"]["survivors"] == 3  # the sum of the other three
        assert victim in r["clients"] and thief not in r["clients"]  # the victim's keys were its own
    assert f"node of {thief!r} sent a message of {victim!r}" in caplog.text
