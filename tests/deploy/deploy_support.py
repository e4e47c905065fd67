"""Helpers of the Flower deployment tests: configs, an in-process courier and an in-process grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedlm.deploy.client_node import ClientNode
from fedlm.deploy.messaging import REGISTER, Exchange
from fedlm.deploy.secagg_remote import CONSISTENCY, KEYS, SHARE, UNMASK


def deploy_overrides(data: Path, **extra: object) -> list[str]:
    """A 3-client, 2-round tiny-llama federation with secure aggregation on."""
    from tests_support import tiny_overrides

    base = {
        "data.max_examples_per_client": 8, "federation.weighting": "examples", "federation.seed": 3,
        "secure_aggregation.enabled": "true", "secure_aggregation.clip_range": 0.05,
        "secure_aggregation.max_weight": 8, "lora.r": 4, "eval.every": 2,
    }
    base.update(extra)
    return tiny_overrides(data, **base)


class LoopbackCourier:
    """The Courier's interface over in-process :class:`ClientNode` objects (no Flower).

    ``drop`` lists ``(action, round, client)`` triples whose message goes unanswered.
    """

    def __init__(self, nodes: dict[str, tuple[dict, dict]], drop: set[tuple[str, int, str]] = frozenset()) -> None:
        self.specs = nodes  # client id -> (run_config, node_config)
        self.drop = set(drop)
        self.nodes = {cid: i for i, cid in enumerate(nodes)}
        self.clients: dict[str, dict] = {}
        self.sent: list[tuple[str, str]] = []

    def _node(self, cid: str) -> ClientNode:
        run_config, node_config = self.specs[cid]
        return ClientNode(run_config, node_config)  # a fresh one per message, as Flower does

    def register(self, *, min_nodes: int, wait_s: float) -> dict:
        import json

        for cid in self.specs:
            self.clients[cid] = json.loads(self._node(cid).register()["meta"])
        return self.clients

    def refresh(self) -> list[str]:
        return []

    def exchange(self, action, requests, *, group, trains=False, reply_bytes=0) -> Exchange:
        out = Exchange()
        for cid, fields in requests.items():
            self.sent.append((action, cid))
            if (action, int(group) if group.isdigit() else -1, cid) in self.drop:
                out.missing[cid] = "timeout"
                continue
            node = self._node(cid)
            if action in (KEYS, SHARE, CONSISTENCY, UNMASK):
                out.replies[cid] = node.secagg_step(action, fields)
            elif action == "train":
                out.replies[cid] = node.train(fields)
            elif action == "evaluate":
                out.replies[cid] = node.evaluate(fields)
            elif action == REGISTER:
                out.replies[cid] = node.register()
        return out


class FakeGrid:
    """A Flower ``Grid`` over in-process handlers: node id -> handler(message) -> reply (None: silence).

    ``online`` lists the node ids ``get_node_ids`` reports (default: every handler's).
    Needs ``flwr.supercore.task_identity.TaskIdentity`` set (the ``task_identity`` fixture).
    """

    def __init__(self, handlers: dict[int, Callable], online: list[int] | None = None) -> None:
        self.handlers = handlers
        self.online = list(handlers) if online is None else online
        self.replies: dict[str, object] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.online)

    def push_messages(self, msgs) -> list[str]:
        ids = []
        for m in msgs:
            mid = m.object_id
            m.metadata.__dict__["_message_id"] = mid
            reply = self.handlers[m.metadata.dst_node_id](m)
            if reply is not None:
                self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, ids) -> list:
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def reply_with(fields: dict, *, src: int | None = None) -> Callable:
    """A FakeGrid handler answering every message with ``fields`` (``src``: a forged sender node)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedlm.deploy.messaging import RECORD

    def handler(msg):
        reply = Message(RecordDict({RECORD: ConfigRecord(dict(fields))}), reply_to=msg)
        if src is not None:
            reply.metadata.__dict__["_src_node_id"] = src
        return reply

    return handler


def registration(cid: str) -> dict:
    import json

    return {"meta": json.dumps({"client_id": cid, "train": 4, "heldout": 2, "chars": 100, "labels": {},
                                "format": "lm"}).encode()}


# Record fields that differ between engines by design: wall-clock timings, and what only a
# deployment has (its transport's own figures, clients that did not answer an evaluation).
ENGINE_ONLY = {"deploy", "missing"}


def comparable(value):
    """A metrics record without timings and engine-only fields, for a field-by-field comparison."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if "seconds" not in k and k not in ENGINE_ONLY}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def assert_same(got, want, path: str = "") -> None:
    """Equal structures, floats to 1e-5 relative; the failure names the field."""
    import math

    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{path}: keys differ: {set(got) ^ set(want)}"
        for k in want:
            assert_same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-7), \
            f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """The deployed run's records equal the simulator's, field by field (floats to 1e-5 relative)."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same(comparable(g), comparable(w), f"record {i} ({w['type']} {w['round']})")
