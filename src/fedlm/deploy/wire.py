"""What a deployed round sends, as bytes inside Flower ``ConfigRecord`` values.

A record is a small JSON header (``meta``) beside named binary fields: tensors travel as
safetensors (no pickle: a node never unpickles what another machine sent), a round plan's
broadcast typed fields as JSON scalars plus one safetensors blob of their tensors (decoded
only into the field types the client's own capabilities declare), SecAgg+ messages and
codec payloads as their own exact bytes. No flwr here: :mod:`.messaging` puts these dicts
into Messages.

Every parser here reads what another machine sent, so each checks types and sizes before
using or allocating anything (:mod:`.checks`) and raises only
:class:`~fedlm.errors.ProtocolError`, whatever the bytes (``tests/deploy/test_reply_fuzz.py``).
The client a reply is attributed to is always the one the transport says sent it
(``expect``); a reply claiming another client is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedlm.deploy import checks
from fedlm.errors import ProtocolError

if TYPE_CHECKING:  # torch and the simulator load only where tensors are handled
    from fedlm.engine.simulation import ClientOutcome
    from fedlm.stages import RoundPlan, TensorDict

Fields = dict[str, bytes]  # one ConfigRecord: field name -> bytes


def tensors_to_bytes(tensors: TensorDict) -> bytes:
    """Name -> tensor as one safetensors blob (contiguous CPU copies)."""
    from safetensors.torch import save as st_save

    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes, *, shapes: checks.Shapes | None = None, what: str = "tensors") -> TensorDict:
    """A peer's safetensors blob, its header checked (against ``shapes``) before any allocation."""
    return checks.load_tensors(data, what=what, shapes=shapes)


def _meta(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=_jsonable).encode()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "numel"):  # a torch tensor
        return v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def field_bytes(fields: Fields, name: str, *, what: str = "a fedlm message") -> bytes:
    """``fields[name]``, which must be bytes."""
    if not isinstance(fields, Mapping):
        raise ProtocolError(f"{what} is a {type(fields).__name__}, not a record of fields")
    if name not in fields:
        raise ProtocolError(f"{what} lacks its {name!r} field; are both ends on one fedlm version?")
    value = fields[name]
    if not isinstance(value, (bytes, bytearray)):
        raise ProtocolError(f"{what}'s {name!r} field is a {type(value).__name__}, not bytes")
    return bytes(value)


def read_meta(fields: Fields, *, limit: int = checks.META_LIMIT) -> dict[str, Any]:
    """The JSON header (``meta``) of a message, as a dict.

    Raises:
        ProtocolError: no ``meta``, more than ``limit`` bytes, not JSON, or not an object.
    """
    meta = checks.read_json(field_bytes(fields, "meta"), what="the message's meta", limit=limit)
    return checks.as_dict(meta, "the message's meta")


# -- plans -------------------------------------------------------------------------------
def plan_to_fields(plan: RoundPlan) -> Fields:
    """The plan with its broadcast fields (server-only ones, like the SecAgg+ session, stay)."""
    import dataclasses

    scalars: dict[str, dict[str, Any]] = {}
    tensors: dict[str, Any] = {}
    for kind, value in plan.fields.items():
        if not kind.broadcast:
            continue
        entry = scalars.setdefault(kind.__name__, {})
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if isinstance(v, dict):  # a TensorDict: its tensors in the blob, its names in the header
                entry[f.name] = {"tensors": sorted(v)}
                tensors.update({f"{kind.__name__}/{f.name}/{k}": t for k, t in v.items()})
            else:
                entry[f.name] = v
    meta = {"round": plan.round, "cohort": list(plan.cohort), "lr": plan.lr, "local_steps": plan.local_steps,
            "seed": plan.seed, "fields": scalars}
    return {"plan": _meta(meta), "plan_tensors": tensors_to_bytes(tensors)}


def plan_from_fields(fields: Fields, kinds: Mapping[str, type], *,
                     shapes: checks.Shapes | None = None) -> RoundPlan:
    """The plan a server sent, with its typed fields rebuilt as ``kinds`` (name -> PlanField type).

    ``shapes``: the model's trainable shapes, which a field's tensors must have.

    Raises:
        ProtocolError: a malformed plan, or a field this client's capabilities do not declare.
    """
    import dataclasses

    from fedlm.stages import RoundPlan

    meta = checks.as_dict(checks.read_json(field_bytes(fields, "plan"), what="the round plan",
                                           limit=checks.REQUEST_META_LIMIT), "the round plan")
    blob = checks.load_tensors(fields.get("plan_tensors", b""), what="the plan's tensors", shapes=shapes,
                               nested=True)
    try:
        plan = RoundPlan(round=checks.as_int(meta.get("round"), "plan round", lo=1),
                         cohort=tuple(checks.as_str(c, "plan cohort id") for c in _list(meta.get("cohort"), "cohort")),
                         lr=checks.as_float(meta.get("lr"), "plan lr", finite=True),
                         local_steps=checks.as_int(meta.get("local_steps"), "plan local_steps"),
                         seed=checks.as_int(meta.get("seed"), "plan seed", lo=None))
        values = []
        for name, entry in checks.as_dict(meta.get("fields") or {}, "plan fields").items():
            kind = kinds.get(name)
            if kind is None or not getattr(kind, "broadcast", False):
                raise ProtocolError(f"the plan carries a field {str(name)[:60]!r} this client does not expect; "
                                    "are server and client on one fedlm version and config?")
            entry = checks.as_dict(entry, f"plan field {name}")
            args = {}
            for f in dataclasses.fields(kind):
                if f.name not in entry:
                    raise ProtocolError(f"plan field {name} lacks {f.name!r}")
                v = entry[f.name]
                if isinstance(v, dict):  # a TensorDict: its names here, its tensors in the blob
                    names = _list(checks.as_dict(v, f"{name}.{f.name}").get("tensors"), f"{name}.{f.name}")
                    missing = [k for k in names if f"{name}/{f.name}/{k}" not in blob]
                    if missing or not all(isinstance(k, str) for k in names):
                        raise ProtocolError(f"plan field {name}.{f.name} names tensors the plan lacks")
                    args[f.name] = {k: blob[f"{name}/{f.name}/{k}"] for k in names}
                elif v is None or isinstance(v, (bool, int, float)):
                    args[f.name] = v
                else:
                    args[f.name] = checks.as_str(v, f"{name}.{f.name}", max_len=4096, empty=True)
            values.append(kind(**args))
        return plan.with_fields(*values)
    except ProtocolError:
        raise
    except Exception as exc:  # a field type's own checks (its __post_init__)
        raise ProtocolError(f"unreadable round plan ({type(exc).__name__}: {str(exc)[:200]})") from None


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list) or len(v) > 1_000_000:
        raise ProtocolError(f"{what} is a {type(v).__name__}, not a list")
    return v


# -- outcomes ----------------------------------------------------------------------------
def outcome_to_fields(outcome: ClientOutcome) -> Fields:
    """What a client sends back: its update (tensors and/or payload), failure and metrics.

    The client's new state is not part of it: it stays on the client's disk.
    """
    u = outcome.update
    meta: dict[str, Any] = {
        "client_id": outcome.client_id, "failure": outcome.failure, "metrics": outcome.metrics,
        "train_seconds": outcome.train_seconds, "stage_seconds": outcome.stage_seconds, "update": None,
    }
    fields: Fields = {}
    if u is not None:
        meta["update"] = {"client_id": u.client_id, "round": u.round, "num_examples": u.num_examples,
                          "metrics": u.metrics, "has_tensors": u.tensors is not None, "has_payload": u.payload is not None}
        if u.tensors is not None:
            fields["tensors"] = tensors_to_bytes(u.tensors)
        if u.payload is not None:
            fields["payload"] = bytes(u.payload)
    fields["meta"] = _meta(meta)
    return fields


def outcome_from_fields(fields: Fields, *, expect: str, round_id: int | None = None,
                        shapes: checks.Shapes | None = None, max_bytes: int | None = None,
                        max_examples: int | None = None) -> ClientOutcome:
    """Parse a client's ``train`` reply, checking every field before it is used.

    Args:
        fields: the reply.
        expect: the client the transport says sent it (the server sent it the plan).
        round_id: the round it must be for.
        shapes: the shared tensors' shapes; an update's tensors must be a subset of them.
        max_bytes: the largest payload accepted (``federation.max_update_bytes`` or a bound
            from the model's size), checked before anything is decoded.
        max_examples: the largest ``num_examples`` (the client's registered train size).

    Raises:
        ProtocolError: anything malformed, for another client or round, or too large.
    """
    from fedlm.engine.simulation import ClientOutcome
    from fedlm.stages import ClientUpdate

    meta = read_meta(fields)
    if meta.get("client_id") != expect:
        raise ProtocolError(f"a node answered for client {str(meta.get('client_id'))[:60]!r} instead of {expect!r}")
    update = None
    if (u := meta.get("update")) is not None:
        u = checks.as_dict(u, "update")
        num = checks.as_int(u.get("num_examples"), "update num_examples", lo=1, hi=max_examples)
        got_round = checks.as_int(u.get("round"), "update round", lo=1)
        if round_id is not None and got_round != round_id:
            raise ProtocolError(f"an update for round {got_round} arrived in round {round_id}")
        tensors = payload = None
        if checks.as_bool(u.get("has_payload"), "update has_payload"):
            payload = field_bytes(fields, "payload", what="the reply")
            if max_bytes is not None and len(payload) > max_bytes:
                raise ProtocolError(f"a payload of {len(payload)} bytes exceeds the {max_bytes} allowed")
        if checks.as_bool(u.get("has_tensors"), "update has_tensors"):
            blob = field_bytes(fields, "tensors", what="the reply")
            if max_bytes is not None and len(blob) > max_bytes:
                raise ProtocolError(f"update tensors of {len(blob)} bytes exceed the {max_bytes} allowed")
            tensors = checks.load_tensors(blob, what="the update's tensors", shapes=shapes)
        if tensors is None and payload is None:
            raise ProtocolError("an update with neither tensors nor a payload")
        update = ClientUpdate(client_id=expect, round=got_round, num_examples=num, tensors=tensors, payload=payload,
                              metrics=checks.scalars(u.get("metrics") or {}, "update metrics"))
    failure = meta.get("failure")
    if failure is not None:
        failure = {**checks.strings(failure, "failure"), "client_id": expect}
    metrics = checks.scalars(meta.get("metrics") or {}, "metrics")
    if metrics and not isinstance(metrics.get("train_loss"), (int, float)):  # the round's mean reads it
        raise ProtocolError("the reply's metrics lack a numeric train_loss")
    if update is None and failure is None:
        raise ProtocolError("a reply with neither an update nor a failure")
    return ClientOutcome(expect, update=update, failure=failure, metrics=metrics,
                         train_seconds=checks.as_float(meta.get("train_seconds") or 0.0, "train_seconds",
                                                       finite=True, lo=0.0),
                         stage_seconds=checks.seconds(meta.get("stage_seconds") or {}, "stage_seconds"))


# -- registration and evaluation replies (server side) ------------------------------------
def register_from_fields(fields: Fields) -> dict[str, Any]:
    """A node's ``query.fedlm_register`` reply: its client id, data sizes and format."""
    meta = read_meta(fields)
    labels = {checks.as_str(k, "label"): checks.as_int(v, f"label {k[:40]!r} count")
              for k, v in checks.as_dict(meta.get("labels") or {}, "labels").items()}
    return {"client_id": checks.as_str(meta.get("client_id"), "client_id"),
            "train": checks.as_int(meta.get("train"), "train size", lo=1),
            "heldout": checks.as_int(meta.get("heldout"), "heldout size"),
            "chars": checks.as_int(meta.get("chars"), "chars"),
            "labels": labels, "format": checks.as_str(meta.get("format"), "format", max_len=64)}


def eval_from_fields(fields: Fields, *, expect: str) -> dict[str, float | int]:
    """An ``evaluate`` reply: the held-out loss sum, correct tokens and tokens of ``expect``."""
    meta = _answer_meta(fields, expect)
    tokens = checks.as_int(meta.get("tokens"), "tokens")
    correct = checks.as_int(meta.get("correct"), "correct", hi=tokens)
    return {"loss_sum": checks.as_float(meta.get("loss_sum"), "loss_sum", lo=0.0), "correct": correct,
            "tokens": tokens}


def answer_from_fields(fields: Fields, *, expect: str) -> dict[str, Any]:
    """A capability's end-of-run answer from ``expect`` (a JSON object; its capability reads it)."""
    return checks.as_dict(_answer_meta(fields, expect).get("answer"), "answer")


def _answer_meta(fields: Fields, expect: str) -> dict[str, Any]:
    meta = read_meta(fields)
    if meta.get("client_id") != expect:
        raise ProtocolError(f"a node answered for client {str(meta.get('client_id'))[:60]!r} instead of {expect!r}")
    return meta


def failed(cid: str, reason: str, detail: str) -> ClientOutcome:
    """A client that sent nothing usable (no reply, an error reply, an unreadable one)."""
    from fedlm.engine.simulation import ClientOutcome

    return ClientOutcome(cid, failure={"client_id": cid, "reason": reason, "detail": detail, "side": "transport"})


__all__ = [
    "Fields",
    "answer_from_fields",
    "eval_from_fields",
    "failed",
    "field_bytes",
    "outcome_from_fields",
    "outcome_to_fields",
    "plan_from_fields",
    "plan_to_fields",
    "read_meta",
    "register_from_fields",
    "tensors_from_bytes",
    "tensors_to_bytes",
]
