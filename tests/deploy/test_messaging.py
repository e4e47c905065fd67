"""The server's courier: each client id bound to one node, senders taken from the transport."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("flwr")

from deploy_support import FakeGrid, registration, reply_with

from fedlm.config.deploy import DeployConfig
from fedlm.deploy.app_writer import CLIENT_NODES, pinned_nodes, run_config
from fedlm.deploy.messaging import Courier, fields_of
from fedlm.errors import ConfigError, ProtocolError

DEPLOY = DeployConfig(floor_s=5, train_s=0, register_s=5)


def test_a_client_id_stays_with_the_first_node_and_a_hijack_is_refused(task_identity, caplog):
    grid = FakeGrid({11: reply_with(registration("a")), 12: reply_with(registration("b")),
                     13: reply_with(registration("a"))}, online=[11, 12])
    courier = Courier(grid, DEPLOY)
    assert courier.refresh() == ["a", "b"]
    grid.online.append(13)  # another authenticated node joins and claims client "a"
    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.messaging"):
        assert courier.refresh() == []
    assert courier.nodes == {"a": 11, "b": 12} and "bound to node 11" in courier.refused[13]
    assert "refused node 13 as client 'a'" in caplog.text
    sent = []
    grid.handlers[11] = lambda m: sent.append(m.metadata.dst_node_id) or reply_with({"meta": b"{}"})(m)
    got = courier.exchange("train", {"a": {"meta": b"{}"}}, group="1")
    assert sent == [11] and set(got.replies) == {"a"}  # the round goes to the node bound at registration


def test_pinned_enrolment_refuses_a_node_that_registers_first(task_identity, caplog):
    grid = FakeGrid({13: reply_with(registration("a")), 11: reply_with(registration("a")),
                     12: reply_with(registration("c"))}, online=[13])
    courier = Courier(grid, DEPLOY, pinned={"a": 11})
    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.messaging"):
        assert courier.refresh() == []  # the impostor came first: refused all the same
        grid.online += [11, 12]
        assert courier.refresh() == ["a"]
    assert courier.nodes == {"a": 11}
    assert "enrolled under node 11" in courier.refused[13] and "not in the run's enrolment" in courier.refused[12]
    assert caplog.text.count("refused node") == 2


def test_a_node_cannot_hold_two_client_ids(task_identity):
    courier = Courier(FakeGrid({}), DEPLOY)
    assert courier.bind("a", 11) is None and courier.bind("a", 11) is None
    assert "already holds client 'a'" in courier.bind("b", 11)


def test_a_reply_from_another_node_is_that_clients_dropout(task_identity, caplog):
    grid = FakeGrid({11: reply_with(registration("a")), 12: reply_with(registration("b"))})
    courier = Courier(grid, DEPLOY)
    courier.refresh()
    grid.handlers[11] = reply_with({"meta": b"{}"}, src=12)  # arrives as node 12's, answering node 11's request
    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.messaging"):
        got = courier.exchange("train", {"a": {"meta": b"{}"}}, group="1")
    assert not got.replies and got.missing["a"].startswith("wrong_sender")
    assert "from node 12" in caplog.text


@pytest.mark.parametrize("value", [10**12, "text", 1.5, [1, 2], True])
def test_non_bytes_fields_are_refused_before_any_allocation(task_identity, value):
    from flwr.app import ConfigRecord, Message, RecordDict

    msg = Message(RecordDict({"fedlm": ConfigRecord({"meta": value})}), dst_node_id=1, message_type="train")
    with pytest.raises(ProtocolError, match="not bytes"):
        fields_of(msg)  # bytes(10**12) would have allocated a terabyte
    grid = FakeGrid({11: reply_with(registration("a"))})
    courier = Courier(grid, DEPLOY)
    courier.refresh()
    grid.handlers[11] = reply_with({"meta": value})
    assert courier.exchange("train", {"a": {"meta": b"{}"}}, group="1").missing["a"].startswith("unreadable")


def test_an_unreadable_registration_is_logged_and_ignored(task_identity, caplog):
    grid = FakeGrid({11: reply_with({"meta": b'{"client_id": 5}'}), 12: reply_with(registration("b"))})
    courier = Courier(grid, DEPLOY)
    with caplog.at_level(logging.WARNING, logger="fedlm.deploy.messaging"):
        assert courier.refresh() == ["b"]
    assert "unreadable registration" in courier.refused[11] and "node 11" in caplog.text


def test_the_run_config_carries_the_enrolment(tiny_config):
    rc = run_config(tiny_config, client_nodes={"a": 11, "b": 12})
    assert pinned_nodes(rc) == {"a": 11, "b": 12} and pinned_nodes(run_config(tiny_config)) is None
    with pytest.raises(ConfigError, match=CLIENT_NODES):
        pinned_nodes({CLIENT_NODES: json.dumps({"a": "11"})})
