"""What a deployed round sends, as bytes inside Flower ``ConfigRecord`` values.

A record is a small JSON header (``meta``) beside named binary fields: tensors travel as
safetensors (no pickle: a node never unpickles what another machine sent), plan extras
as a ``torch.save`` blob read back with ``weights_only=True`` (tensors, numbers, strings,
lists and dicts only), SecAgg+ messages and codec payloads as their own exact bytes.
No flwr here: :mod:`.messaging` puts these dicts into Messages.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fedlm.errors import FedlmError

if TYPE_CHECKING:  # torch and the simulator load only where tensors are handled
    from fedlm.runtime.simulation import ClientOutcome
    from fedlm.stages import RoundPlan, TensorDict

SECAGG_KEY = "secure_aggregation"  # = fedlm.runtime.secagg_round.SECAGG_KEY (checked in the tests)

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
    """The plan without the server's SecAgg+ session (clients hold their own state)."""
    import torch

    extra = {k: v for k, v in plan.extra.items() if k != SECAGG_KEY}
    buf = io.BytesIO()
    torch.save(extra, buf)
    meta = {"round": plan.round, "cohort": list(plan.cohort), "lr": plan.lr, "local_steps": plan.local_steps,
            "seed": plan.seed, "secagg": SECAGG_KEY in plan.extra}
    return {"plan": _meta(meta), "plan_extra": buf.getvalue()}


def plan_from_fields(fields: Fields) -> tuple[RoundPlan, bool]:
    """The plan and whether the round runs secure aggregation."""
    import torch

    from fedlm.stages import RoundPlan

    meta = json.loads(fields["plan"].decode())
    extra = torch.load(io.BytesIO(fields["plan_extra"]), weights_only=True)
    plan = RoundPlan(round=int(meta["round"]), cohort=tuple(meta["cohort"]), lr=float(meta["lr"]),
                     local_steps=int(meta["local_steps"]), seed=int(meta["seed"]), extra=dict(extra))
    return plan, bool(meta["secagg"])


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
    from fedlm.runtime.simulation import ClientOutcome
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
    from fedlm.runtime.simulation import ClientOutcome

    return ClientOutcome(cid, failure={"client_id": cid, "reason": reason, "detail": detail, "side": "transport"})


def with_extra(plan: RoundPlan, **extra: Any) -> RoundPlan:
    return replace(plan, extra={**plan.extra, **extra})


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
    "with_extra",
]
