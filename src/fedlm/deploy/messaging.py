"""The server's side of the wire: fedlm fields in Flower Messages, with timeouts.

:class:`Courier` owns the ``Grid`` of a run. It learns which node holds which fedlm
client (a ``query.fedlm_register`` message to every connected node, again at every
round so a restarted node rejoins), and :meth:`Courier.exchange` sends one message per
client and collects the replies until each one's timeout, derived from the payload size
(``deploy.*``). A client whose node is gone, answers with an error or answers too late
is simply missing from the result: the caller treats it as dropped. A node the SuperLink
reports offline (its heartbeats stopped) is not sent anything, and the SuperLink answers
for a node that goes offline while a message waits, so a dead node costs about one
heartbeat period, not a whole timeout.

Who sent a reply is taken from the transport, never from inside the message: a reply is
matched to the request it answers and must come from the node the request went to
(``metadata.src_node_id``, which the SuperLink ties to the node's authenticated key).
Each client id is bound to one node at registration: the node ids the run config pins
(``client-nodes``, written by ``fedlm deploy local`` from ``flwr supernode register``),
else the first node that claims it. A node claiming a client id bound to another node,
or a second client id, is refused and logged; it is never sent a round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlm.config.deploy import DeployConfig
from fedlm.deploy.wire import Fields, register_from_fields
from fedlm.errors import FedlmError, ProtocolError

log = logging.getLogger(__name__)

RECORD = "fedlm"  # the ConfigRecord holding fedlm's fields in every message
REGISTER = "query.fedlm_register"
POLL_S = 0.1  # between pulls: a local SuperLink answers in milliseconds (SuperNodes poll every 3 s)


def to_message(fields: Fields, node_id: int, message_type: str, *, ttl: float, group: str) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(dict(fields))}), dst_node_id=node_id,
                   message_type=message_type, ttl=ttl, group_id=group)


def fields_of(msg: Message) -> Fields:
    """fedlm's fields of a message: its one ConfigRecord, every value bytes.

    Raises:
        ProtocolError: no such record, or a value that is not bytes (``bytes(10**12)`` of a
            peer's integer would allocate a terabyte).
    """
    record = msg.content.config_records.get(RECORD)
    if record is None:
        raise ProtocolError(f"a message lacks the {RECORD!r} record; is the node running fedlm's ClientApp?")
    out = {}
    for k, v in record.items():
        if not isinstance(v, bytes):
            raise ProtocolError(f"field {str(k)[:60]!r} of a fedlm message is a {type(v).__name__}, not bytes")
        out[k] = v
    return out


@dataclass
class Exchange:
    """Replies of one exchange: client -> fields, and client -> why it is missing."""

    replies: dict[str, Fields] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0  # wall time from the first push to the last reply


class Courier:
    """Sends fedlm messages to clients over a Flower ``Grid``.

    Args:
        grid: the run's grid (deployment or Flower's simulation engine).
        deploy: the timeouts.
        pinned: client id -> the node id it is enrolled under (None: the first node that
            registers a client id is bound to it).
    """

    def __init__(self, grid: Grid, deploy: DeployConfig, *, pinned: Mapping[str, int] | None = None) -> None:
        self.grid = grid
        self.deploy = deploy
        self.pinned = dict(pinned) if pinned else None
        self.nodes: dict[str, int] = {}  # client id -> node id, bound once
        self.clients: dict[str, dict[str, Any]] = {}  # client id -> its register reply
        self.refused: dict[int, str] = {}  # node id -> why its registration was refused
        self._asked: set[int] = set()

    # -- membership ----------------------------------------------------------------------
    def register(self, *, min_nodes: int, wait_s: float) -> dict[str, dict[str, Any]]:
        """Wait for ``min_nodes`` nodes, then learn each node's client id and data sizes.

        Raises:
            FedlmError: fewer than ``min_nodes`` clients answered within ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            self.refresh()
            if len(self.clients) >= min_nodes or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if len(self.clients) < min_nodes:
            raise FedlmError(
                f"only {len(self.clients)} of {min_nodes} clients registered within deploy.register_s={wait_s:g} s; "
                "check that the SuperNodes run, are allow-listed and reach the SuperLink"
            )
        return self.clients

    def refresh(self) -> list[str]:
        """Ask nodes never asked before which client they hold; returns the new client ids."""
        fresh = [n for n in self.grid.get_node_ids() if n not in self._asked]
        if not fresh:
            return []
        timeout = self.deploy.timeout(0)
        msgs = [to_message({"meta": b"{}"}, n, REGISTER, ttl=timeout, group="register") for n in fresh]
        got = self._send(msgs, {m.metadata.dst_node_id: timeout for m in msgs})
        added = []
        for node_id, reply in got.items():
            if isinstance(reply, str):
                continue  # not answering yet: asked again at the next refresh
            self._asked.add(node_id)
            try:
                meta = register_from_fields(reply)
            except FedlmError as exc:
                self.refused[node_id] = f"unreadable registration: {exc}"
                log.warning("node %s sent an unreadable registration; ignored (%s)", node_id, exc)
                continue
            cid = meta["client_id"]
            why = self.bind(cid, node_id)
            if why is not None:
                self.refused[node_id] = why
                log.warning("refused node %s as client %r: %s", node_id, cid, why)
                continue
            if cid not in self.clients:
                added.append(cid)
            self.clients[cid] = meta
        return added

    def bind(self, cid: str, node_id: int) -> str | None:
        """Bind client ``cid`` to ``node_id``; returns why not, or None when bound (or already)."""
        if self.pinned is not None and self.pinned.get(cid) != node_id:
            where = self.pinned.get(cid)
            return (f"client {cid!r} is enrolled under node {where}" if where is not None
                    else f"client {cid!r} is not in the run's enrolment (client-nodes)")
        holder = self.nodes.get(cid)
        if holder is not None and holder != node_id:
            return f"client {cid!r} is bound to node {holder}"
        other = next((c for c, n in self.nodes.items() if n == node_id and c != cid), None)
        if other is not None:
            return f"node {node_id} already holds client {other!r}"
        self.nodes[cid] = node_id
        return None

    # -- exchanges -----------------------------------------------------------------------
    def exchange(
        self, action: str, requests: Mapping[str, Fields], *, group: str, trains: bool = False,
        reply_bytes: int = 0,
    ) -> Exchange:
        """Send ``requests[cid]`` to each client's node as ``action``; collect the replies.

        Each message's timeout is ``deploy.timeout(max(request, reply_bytes), trains=...)``.
        """
        out = Exchange()
        t0 = time.perf_counter()
        msgs, timeouts, by_node = [], {}, {}
        online = set(self.grid.get_node_ids())  # the SuperLink's view (heartbeats)
        for cid, fields in requests.items():
            node = self.nodes.get(cid)
            if node is None or node not in online:  # a node gone offline is a dropout now, not at its timeout
                out.missing[cid] = "offline" if node is not None else "not_connected"
                continue
            size = sum(len(v) for v in fields.values())
            out.bytes_down += size
            timeout = self.deploy.timeout(max(size, reply_bytes), trains=trains)
            msgs.append(to_message(fields, node, action, ttl=timeout, group=group))
            timeouts[node] = timeout
            by_node[node] = cid
        for node, reply in self._send(msgs, timeouts).items():
            cid = by_node[node]
            if isinstance(reply, str):
                out.missing[cid] = reply
            else:
                out.replies[cid] = reply
                out.bytes_up += sum(len(v) for v in reply.values())
        out.seconds = time.perf_counter() - t0
        return out

    def _send(self, msgs: list[Message], timeouts: dict[int, float]) -> dict[int, Fields | str]:
        """Push, then pull until every reply is in or its node's timeout passed."""
        if not msgs:
            return {}
        ids = list(self.grid.push_messages(msgs))
        pending = {mid: m.metadata.dst_node_id for mid, m in zip(ids, msgs) if mid}
        start = time.monotonic()
        out: dict[int, Fields | str] = {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.metadata.src_node_id != node:  # the sender is the transport's, not the message's
                    out[node] = f"wrong_sender: a reply for node {node} came from node {reply.metadata.src_node_id}"
                    log.warning("dropped a reply for node %s from node %s", node, reply.metadata.src_node_id)
                elif reply.has_error():
                    out[node] = f"error: {reply.error.reason}"
                else:
                    try:
                        out[node] = fields_of(reply)
                    except FedlmError as exc:
                        out[node] = f"unreadable: {exc}"
            late = [mid for mid, node in pending.items() if time.monotonic() - start > timeouts[node]]
            for mid in late:
                out[pending.pop(mid)] = "timeout"
            if pending:
                time.sleep(POLL_S)
        return out


__all__ = ["RECORD", "REGISTER", "Courier", "Exchange", "fields_of", "to_message"]
