"""What a deployed round sends, as bytes inside Flower ``ConfigRecord`` values.

A record is a small JSON header (``meta``) beside named binary fields: tensors travel as
safetensors (no pickle: a node never unpickles what another machine sent), a round plan's
broadcast typed fields as JSON scalars plus one safetensors blob of their tensors (decoded
only into the field types the client's own capabilities declare), SecAgg+ messages and
codec payloads as their own exact bytes. No flwr here: :mod:`.messaging` puts these dicts
into Messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedlm.errors import FedlmError

if TYPE_CHECKING:  # torch and the simulator load only where tensors are handled
    from fedlm.engine.simulation import ClientOutcome
    from fedlm.stages import RoundPlan, TensorDict

Fields = dict[str, bytes]  # one ConfigRecord: field name -> bytes


def tensors_to_bytes(tensors: TensorDict) -> bytes:
    """Name -> tensor as one safetensors blob (contiguous CPU copies)."""
    from safetensors.torch import save as st_save

    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes) -> TensorDict:
    from safetensors.torch import load as st_load

    return dict(st_load(data)) if data else {}


def _meta(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=_jsonable).encode()


def _jsonable(v: Any) -> Any:
    if hasattr(v, "numel"):  # a torch tensor
        return v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def read_meta(fields: Fields) -> dict[str, Any]:
    try:
        return json.loads(fields["meta"].decode())
    except (KeyError, ValueError) as exc:
        raise FedlmError(f"a fedlm message lacks a readable 'meta' field ({exc}); are both ends on one fedlm version?") from exc


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


def plan_from_fields(fields: Fields, kinds: Mapping[str, type]) -> RoundPlan:
    """The plan a server sent, with its typed fields rebuilt as ``kinds`` (name -> PlanField type).

    Raises:
        FedlmError: a malformed plan, or a field this client's capabilities do not declare.
    """
    import dataclasses

    from fedlm.stages import RoundPlan

    try:
        meta = json.loads(fields["plan"].decode())
        blob = tensors_from_bytes(fields.get("plan_tensors", b""))
        values = []
        for name, entry in dict(meta.get("fields") or {}).items():
            kind = kinds.get(name)
            if kind is None or not kind.broadcast:
                raise FedlmError(f"the plan carries a field {name!r} this client does not expect; "
                                 "are server and client on one fedlm version and config?")
            args = {}
            for f in dataclasses.fields(kind):
                v = entry[f.name]
                if isinstance(v, dict):
                    args[f.name] = {k: blob[f"{name}/{f.name}/{k}"] for k in v["tensors"]}
                else:
                    args[f.name] = v
            values.append(kind(**args))
        plan = RoundPlan(round=int(meta["round"]), cohort=tuple(str(c) for c in meta["cohort"]), lr=float(meta["lr"]),
                         local_steps=int(meta["local_steps"]), seed=int(meta["seed"]))
    except FedlmError:
        raise
    except Exception as exc:
        raise FedlmError(f"unreadable round plan ({type(exc).__name__}: {exc})") from None
    return plan.with_fields(*values)


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


def outcome_from_fields(fields: Fields, *, expect: str) -> ClientOutcome:
    """Parse a client's reply; ``expect`` is the client id the server sent the plan to."""
    from fedlm.engine.simulation import ClientOutcome
    from fedlm.stages import ClientUpdate

    meta = read_meta(fields)
    if meta.get("client_id") != expect:
        raise FedlmError(f"a node answered for client {meta.get('client_id')!r} instead of {expect!r}")
    update = None
    if (u := meta.get("update")) is not None:
        update = ClientUpdate(
            client_id=expect, round=int(u["round"]), num_examples=int(u["num_examples"]),
            tensors=tensors_from_bytes(fields["tensors"]) if u["has_tensors"] else None,
            payload=fields["payload"] if u["has_payload"] else None, metrics=dict(u["metrics"]),
        )
    return ClientOutcome(expect, update=update, failure=meta.get("failure"), metrics=meta.get("metrics") or {},
                         train_seconds=float(meta.get("train_seconds") or 0.0),
                         stage_seconds=dict(meta.get("stage_seconds") or {}))


def failed(cid: str, reason: str, detail: str) -> ClientOutcome:
    """A client that sent nothing usable (no reply, an error reply, an unreadable one)."""
    from fedlm.engine.simulation import ClientOutcome

    return ClientOutcome(cid, failure={"client_id": cid, "reason": reason, "detail": detail, "side": "transport"})


__all__ = [
    "Fields",
    "failed",
    "outcome_from_fields",
    "outcome_to_fields",
    "plan_from_fields",
    "plan_to_fields",
    "read_meta",
    "tensors_from_bytes",
    "tensors_to_bytes",
]
