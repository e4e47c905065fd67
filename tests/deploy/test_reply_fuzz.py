"""Fuzz every parser a node's reply reaches on the server, and the plan parser on a client.

Run with ``pytest tests/deploy/test_reply_fuzz.py -m fuzz``.

Genuine replies (a train reply with tensors, one with a payload, a client's failure, a
registration, evaluation sums, a capability's answer) and a genuine round plan are built
with the wire's own encoders; each case mutates one of them and hands it to its parser:

* byte-level: flips, insertions, deletions, truncation and extension of one field;
* JSON-level: a value anywhere in the header replaced by another type or an extreme
  value (huge integers, NaN, deep nesting, long strings), a key dropped or added;
* safetensors-level: a header entry's shape, dtype or offsets changed, its declared
  header length changed, its data cut or padded;
* record-level: a field dropped, or replaced by a non-bytes value (``10**12`` would make
  ``bytes(v)`` allocate a terabyte);
* random bytes in every field.

The only exceptions allowed are fedlm's own (:class:`~fedlm.errors.FedlmError`); a reply
that parses must respect the checked bounds (tensor shapes, payload size, counts). The
cases are drawn from a seeded generator, so every run checks the same ones.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import time

import pytest
import torch

pytest.importorskip("flwr")

from fedlm.aggregation.scaffold_stage import ScaffoldRound
from fedlm.deploy import wire
from fedlm.deploy.messaging import RECORD, fields_of
from fedlm.engine.simulation import ClientOutcome
from fedlm.errors import FedlmError
from fedlm.privacy.stages import DpRound
from fedlm.stages import ClientUpdate, RoundPlan

pytestmark = pytest.mark.fuzz

CASES = 40_000  # the fixed budget (4-13 s on one core here), over the eight parsers below, plus MESSAGE_CASES whole Flower messages
MESSAGE_CASES = 500
SHAPES = {"l0.lora_A": (2, 6), "l0.lora_B": (6, 2), "l1.lora_A": (2, 6)}
MAX_BYTES = 4096
MAX_EXAMPLES = 8
KINDS = {"DpRound": DpRound, "ScaffoldRound": ScaffoldRound}
EXTREMES = [None, True, False, 0, -1, 1, 2**63, -(2**63), 10**30, 1.5, -0.0, float("nan"), float("inf"), "",
            "x" * 5000, "a", [], [1, 2], {}, {"k": 1}, [[[[[[[[]]]]]]]], "é\u0000", 1e300]


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in SHAPES.items() if k != "l1.lora_A" or seed % 2}


def genuine() -> dict[str, tuple]:
    """name -> (fields, parse) of every reply kind, and the plan."""
    with_tensors = ClientOutcome("a", update=ClientUpdate("a", 3, 5, tensors=_tensors(1), metrics={"local_steps": 2}),
                                 metrics={"train_loss": 1.25, "steps": 2}, train_seconds=0.5,
                                 stage_seconds={"clip": 0.01})
    with_payload = ClientOutcome("a", update=ClientUpdate("a", 3, 8, payload=bytes(range(200))),
                                 metrics={"train_loss": 0.5, "steps": 2, "clip.norm": 1.0})
    failure = ClientOutcome("a", failure={"client_id": "a", "reason": "straggler", "detail": "slow", "side": "client"})
    plan = RoundPlan(round=3, cohort=("a", "b"), lr=0.01, local_steps=2, seed=7).with_fields(
        DpRound(clip_norm=1.5, expected_cohort_size=2.0), ScaffoldRound(_tensors(2)))

    def outcome(f):
        return wire.outcome_from_fields(f, expect="a", round_id=3, shapes=SHAPES, max_bytes=MAX_BYTES,
                                        max_examples=MAX_EXAMPLES)

    meta = lambda obj: {"meta": json.dumps(obj).encode()}  # noqa: E731
    return {
        "tensors": (wire.outcome_to_fields(with_tensors), outcome),
        "payload": (wire.outcome_to_fields(with_payload), outcome),
        "failure": (wire.outcome_to_fields(failure), outcome),
        "register": (meta({"client_id": "a", "train": 5, "heldout": 2, "chars": 300, "labels": {"x": 2},
                           "format": "lm"}), wire.register_from_fields),
        "eval": (meta({"client_id": "a", "loss_sum": 12.5, "correct": 3, "tokens": 10}),
                 lambda f: wire.eval_from_fields(f, expect="a")),
        "answer": (meta({"client_id": "a", "answer": {"personal": None, "selection": None}}),
                   lambda f: wire.answer_from_fields(f, expect="a")),
        "meta": (meta({"seed": 4}), wire.read_meta),
        "plan": (wire.plan_to_fields(plan), lambda f: wire.plan_from_fields(f, KINDS, shapes=SHAPES)),
    }


# -- mutations ---------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(at, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del b[at:at + rng.randint(1, 16)]
        elif op == 3:
            b = b[:at]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def mutate_json(rng: random.Random, obj):
    obj = copy.deepcopy(obj)
    path = rng.choice(list(_paths(obj)))
    if not path:
        return rng.choice(EXTREMES)
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    key, op = path[-1], rng.randrange(4)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, dict):
        parent[rng.choice(["extra", "update", "client_id", "__metadata__", "tensors"])] = rng.choice(EXTREMES)
    elif op == 2 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = parent[key] * rng.choice([-1, 0, 2, 10**9]) + rng.choice([0, 1, -1, 0.5])
    else:
        parent[key] = rng.choice(EXTREMES)
    return obj


def mutate_safetensors(rng: random.Random, blob: bytes) -> bytes:
    (n,) = struct.unpack("<Q", blob[:8])
    header, body = json.loads(blob[8:8 + n]), blob[8 + n:]
    op = rng.randrange(4)
    if op == 0:
        header = mutate_json(rng, header)
        raw = json.dumps(header).encode() if not isinstance(header, (float,)) else b"1e999"
        return struct.pack("<Q", len(raw)) + raw + body
    if op == 1:
        entry = header[rng.choice([k for k in header if k != "__metadata__"])]
        field = rng.choice(["shape", "dtype", "data_offsets"])
        entry[field] = rng.choice({
            "shape": [[2**31, 2**31], [0], [6, 2], [2, 6, 1], [-1], [2**62]],
            "dtype": ["I64", "U8", "BOOL", "F64", "F16", "xx"],
            "data_offsets": [[0, 2**40], [-1, 4], [4, 0], [0, 0], [0, len(body) + 8]],
        }[field])
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body
    if op == 2:
        return struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**40, 2**64 - 1])) + blob[8:]
    return blob[:rng.randrange(len(blob))] if rng.random() < 0.5 else blob + bytes(rng.randint(1, 16))


def mutate(rng: random.Random, fields: dict) -> dict:
    fields = dict(fields)
    name = rng.choice(sorted(fields))
    value = fields[name]
    op = rng.randrange(10)
    if op <= 2:
        fields[name] = mutate_bytes(rng, value)
    elif op <= 5 and name in ("meta", "plan"):
        fields[name] = json.dumps(mutate_json(rng, json.loads(value))).encode()
    elif op <= 6 and name in ("tensors", "plan_tensors") and value:
        fields[name] = mutate_safetensors(rng, value)
    elif op == 7:
        del fields[name]
    elif op == 8:
        fields[name] = rng.choice([10**12, -1, 1.5, "meta", None, [1], {"a": b"x"}, True, bytearray(b"{}")])
    else:
        fields[name] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    return fields


def check_bounds(kind: str, result) -> None:
    """What a parsed reply promises the server: shapes, sizes and counts inside their bounds."""
    if isinstance(result, ClientOutcome) and result.update is not None:
        u = result.update
        assert u.client_id == "a" and u.round == 3 and 1 <= u.num_examples <= MAX_EXAMPLES
        assert u.payload is None or len(u.payload) <= MAX_BYTES
        for k, t in (u.tensors or {}).items():
            assert tuple(t.shape) == SHAPES[k]
    if kind == "eval":
        assert 0 <= result["correct"] <= result["tokens"]


def test_every_reply_parser_raises_only_fedlm_errors():
    rng = random.Random(20240601)
    base = genuine()
    for kind, (fields, parse) in base.items():  # the genuine ones parse
        check_bounds(kind, parse(fields))
    kinds = sorted(base)
    counts = {k: 0 for k in kinds}
    rejected = 0
    t0 = time.perf_counter()
    for i in range(CASES):
        kind = kinds[i % len(kinds)]
        fields, parse = base[kind]
        case = mutate(rng, fields)
        try:
            result = parse(case)
        except FedlmError:
            rejected += 1
        except Exception as exc:  # pragma: no cover - the failure report names the case
            pytest.fail(f"case {i} ({kind}): {type(exc).__name__}: {exc} for {_short(case)}")
        else:
            check_bounds(kind, result)
        counts[kind] += 1
    elapsed = time.perf_counter() - t0  # reported, never asserted: the budget is the case count
    assert rejected > CASES // 2  # the mutations mostly break something, and those are refused
    print(f"{CASES} reply cases in {elapsed:.1f} s, {rejected} refused: {counts}")


def test_flower_records_with_any_values_raise_only_fedlm_errors():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = random.Random(7)
    values = [b"{}", b"", 10**12, -5, 1.5, "text", True, [1, 2], [b"a"], ["s"], [1.5], b"\xff" * 100]
    for _ in range(MESSAGE_CASES):
        record = {rng.choice(["meta", "tensors", "payload", "secagg", "x"]): rng.choice(values)
                  for _ in range(rng.randint(0, 4))}
        records = {RECORD: ConfigRecord(record)} if rng.random() < 0.9 else {"other": ConfigRecord(record)}
        msg = Message(RecordDict(records), dst_node_id=1, message_type="train")
        try:
            fields = fields_of(msg)
            wire.outcome_from_fields(fields, expect="a", shapes=SHAPES, max_bytes=MAX_BYTES)
        except FedlmError:
            continue
        except Exception as exc:  # pragma: no cover
            pytest.fail(f"{type(exc).__name__}: {exc} for {record!r}")


def _short(fields) -> str:
    return repr({k: (v[:80] if isinstance(v, (bytes, str)) else v) for k, v in dict(fields).items()})[:600]
