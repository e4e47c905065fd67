"""Decoding hostile payloads: sizes checked against the model before anything is allocated.

The security review's findings, one test each: a ``null`` metadata block crashed the
decoder; a small top-k payload could declare a huge tensor; the byte limit was never
enforced; memory per payload was unbounded. Then the wire format's strictness and the
bound on memory, measured (Python allocations with tracemalloc, the whole process's
peak resident memory in a subprocess for torch's).
"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

import fedlm.compression.payload as payload_module
from fedlm.compression.codecs import CODECS, decode
from fedlm.compression.payload import header_limit
from fedlm.compression.wire import pack, read_header, unpack
from fedlm.errors import UpdateRejected

SHAPES = {"a": (3, 4), "b": (5,)}
G = torch.Generator().manual_seed(0)
X = {k: torch.rand(s, generator=G) - 0.5 for k, s in SHAPES.items()}


def payload_of(name: str = "fp32", tensors: dict | None = None, **kw: object) -> bytes:
    return CODECS.create(name, **kw).encode(tensors or X, generator=torch.Generator().manual_seed(1))


def with_header(payload: bytes, edit) -> bytes:
    """The payload with its header JSON replaced by ``edit(header)`` (data kept)."""
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + n])
    text = json.dumps(edit(header)).encode()
    return len(text).to_bytes(8, "little") + text + payload[8 + n :]


def with_meta(payload: bytes, **meta: str) -> bytes:
    stored, m = unpack(payload)
    m.update(meta)
    m.pop("fedlm_schema")
    return pack(stored, metadata=m)


def with_parts(payload: bytes, **parts: torch.Tensor) -> bytes:
    stored, m = unpack(payload)
    stored.update(parts)
    m.pop("fedlm_schema")
    return pack(stored, metadata=m)


def rejected(fn, *args, **kw) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        fn(*args, **kw)
    assert info.value.detail
    return info.value


# ---- finding 2: headers that crashed the decoder ----------------------------------------


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda h: {**h, "__metadata__": None}, "schema"),  # the AttributeError of the review
        (lambda h: {k: v for k, v in h.items() if k != "__metadata__"}, "schema"),
        (lambda h: {**h, "__metadata__": []}, "malformed"),
        (lambda h: {**h, "__metadata__": {**h["__metadata__"], "codec": None}}, "malformed"),
        (lambda h: {**h, "__metadata__": {**h["__metadata__"], "fedlm_schema": "2"}}, "schema"),
        (lambda h: [h], "malformed"),
        (lambda h: None, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "dtype": "F8_E4M3"}}, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "shape": [-12]}}, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "shape": [2**70]}}, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "data_offsets": [48, 0]}}, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "data_offsets": [4, 52]}}, "malformed"),
        (lambda h: {**h, "0.v": {**h["0.v"], "extra": 1}}, "malformed"),
    ],
)
def test_hostile_headers_are_rejected_not_crashes(edit, reason: str) -> None:
    bad = with_header(payload_of(), edit)
    for call in (lambda: decode(bad), lambda: CODECS.create("fp32").decode(bad, shapes=SHAPES)):
        assert rejected(call).reason == reason


@pytest.mark.parametrize(
    "text",
    [
        b'{"__metadata__":{"fedlm_schema":"1"},"__metadata__":{"fedlm_schema":"1"}}',  # duplicated key
        b'{"__metadata__":{"fedlm_schema":"1","x":NaN}}',
        b'{"__metadata__":{"fedlm_schema":"1\xff"}}',  # not UTF-8
        b"[" * 50_000,  # nested past Python's recursion limit
        b"\xef\xbb\xbf{}",
    ],
)
def test_header_json_is_strict(text: bytes) -> None:
    assert rejected(read_header, len(text).to_bytes(8, "little") + text).reason == "malformed"


@pytest.mark.parametrize("shape", [[2**62, 4, 0], [2**31, 2**31, 2**31, 0], [2**63, 0], [-1, 0]])
def test_empty_tensors_cannot_hide_sizes_torch_cannot_hold(shape: list[int]) -> None:
    # numel 0, but torch multiplies the sizes first: 2**62 * 4 overflows int64
    empty = payload_of("fp32", {"e": torch.zeros(0)})
    declared = with_meta(empty, tensors=json.dumps([["e", shape, "float32"]]))
    assert rejected(decode, declared).reason == "malformed"
    stored = with_header(empty, lambda h: {**h, "0.v": {**h["0.v"], "shape": shape}})
    assert rejected(decode, stored).reason == "malformed"
    fine = with_meta(empty, tensors=json.dumps([["e", [0, 2**63 - 1], "float32"]]))
    assert decode(fine)["e"].shape == (0, 2**63 - 1)


def test_metadata_json_is_strict_too() -> None:
    dup = with_meta(payload_of(), params='{"a": 1, "a": 2}')
    assert rejected(decode, dup).reason == "malformed"
    deep = with_meta(payload_of(), tensors="[" * 50_000)
    assert rejected(decode, deep).reason == "malformed"


@pytest.mark.parametrize(("name", "kw"), [("fp32", {}), ("bf16", {}), ("int4", {"block_size": 4}), ("topk", {"fraction": 0.3})])
def test_the_strict_reader_agrees_with_safetensors_on_valid_payloads(name: str, kw: dict) -> None:
    from safetensors.torch import load

    p = payload_of(name, {**X, "empty": torch.zeros(0, 3)}, **kw)
    ours, theirs = unpack(p)[0], load(p)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)


def test_payloads_that_are_not_bytes_are_rejected() -> None:
    for junk in (None, "text", 3, [1, 2]):
        assert rejected(decode, junk).reason == "malformed"  # type: ignore[arg-type]
    assert decode(memoryview(payload_of()))["a"].shape == (3, 4)


# ---- finding 1: declared sizes against the expected shapes, before allocating ------------


class Spy:
    """Records whether decoding reached the step that copies tensor data."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = payload_module.read_tensors

        def spy(*args, **kw):
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(payload_module, "read_tensors", spy)


def huge_topk(numel: int, fraction: float = 0.001) -> bytes:
    """A valid top-k payload of one tensor "a" declaring ``numel`` elements."""
    codec = CODECS.create("topk", fraction=fraction)
    k = codec.num_kept(numel)
    stored = {"0.i": torch.arange(k, dtype=torch.int32), "0.v": torch.ones(k, dtype=torch.float16)}
    meta = {"codec": "topk", "params": json.dumps(codec.params(), sort_keys=True),
            "tensors": json.dumps([["a", [numel], "float32"]])}
    return pack(stored, metadata=meta)


def test_a_small_topk_payload_cannot_declare_a_huge_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = huge_topk(2**28)  # 1.5 MiB on the wire, 1 GiB of float32 if believed
    assert len(bad) < 2 * 2**20
    codec = CODECS.create("topk", fraction=0.001)
    spy = Spy(monkeypatch)
    assert rejected(codec.decode, bad, shapes={"a": (1024,), "b": (5,)}).reason == "names"
    assert rejected(codec.decode, bad, shapes={"a": (1024,)}).reason == "shape"
    assert rejected(codec.decode, bad, max_numel=2**20).reason == "too_large"  # no shapes: the cap
    assert spy.calls == 0


@pytest.mark.parametrize(
    ("make", "shapes", "reason"),
    [
        (lambda: payload_of("topk", fraction=0.5), {"a": (3, 4)}, "names"),
        (lambda: payload_of("topk", fraction=0.5), {"a": (4, 3), "b": (5,)}, "shape"),
        (lambda: payload_of("topk", fraction=0.5), {"a": (3, 4), "b": (5,), "c": (1,)}, "names"),
        (lambda: with_meta(payload_of("topk", fraction=0.5), tensors='[["a",[3,4],"float32"],["b",[6],"float32"]]'),
         SHAPES, "shape"),
        (lambda: with_meta(payload_of("topk", fraction=0.5), tensors='[["a",[3,4],"float32"],["b",[5],"int8"]]'),
         SHAPES, "malformed"),
        (lambda: with_parts(payload_of("topk", fraction=0.5), **{"0.v": torch.zeros(6)}), SHAPES, "malformed"),
        (lambda: with_parts(payload_of("topk", fraction=0.5), **{"1.i": torch.zeros(2, dtype=torch.int32)}),
         SHAPES, "malformed"),
        (lambda: with_parts(payload_of("topk", fraction=0.5), **{"2.i": torch.zeros(1, dtype=torch.int32)}),
         SHAPES, "malformed"),
        (lambda: payload_of("int8", block_size=2), SHAPES, "codec_mismatch"),
        (lambda: payload_of("topk", fraction=0.5) + b"\x00" * 2**20, SHAPES, "too_large"),
    ],
)
def test_declarations_are_checked_before_any_tensor_data_is_read(make, shapes, reason, monkeypatch) -> None:
    spy = Spy(monkeypatch)
    codec = CODECS.create("topk", fraction=0.5)
    assert rejected(codec.decode, make(), shapes=shapes, max_bytes=2**20).reason == reason
    assert spy.calls == 0


def test_a_huge_header_is_rejected_before_it_is_parsed() -> None:
    limit = header_limit(SHAPES)
    bad = with_meta(payload_of(), padding=" " * (2 * limit))
    tracemalloc.start()
    try:
        err = rejected(CODECS.create("fp32").decode, bad, shapes=SHAPES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "too_large" and "header" in err.detail
    assert peak < 64 * 1024  # the header was never copied nor parsed
    assert decode(bad)["a"].shape == (3, 4)  # without expected shapes there is no such limit


def test_honest_headers_fit_the_limit_even_with_hostile_names() -> None:
    names = ['quote"and\\slash', "é" * 50, "\U0001f600" * 40, "\x00\x01\n", "x" * 300]
    shapes = {n: (2, 3) for n in names} | {"scalar": (), "deep": (1,) * 20}
    for name, kw in [("fp32", {}), ("int4", {"block_size": 2}), ("topk", {"fraction": 0.5})]:
        p = payload_of(name, {k: torch.zeros(s) for k, s in shapes.items()}, **kw)
        assert int.from_bytes(p[:8], "little") <= header_limit(shapes)
        out = CODECS.create(name, **kw).decode(p, shapes=shapes)
        assert list(out) == list(shapes) and all(out[k].shape == s for k, s in shapes.items())


def test_expected_shapes_give_float32_in_the_models_order() -> None:
    # The sender's dtype and order never reach the server's arithmetic.
    half = {"b": X["b"].to(torch.bfloat16), "a": X["a"].to(torch.bfloat16)}
    p = payload_of("bf16", half)
    out = CODECS.create("bf16").decode(p, shapes=SHAPES)
    assert list(out) == ["a", "b"] and all(t.dtype == torch.float32 for t in out.values())
    assert torch.equal(out["a"], half["a"].float())
    restored = CODECS.create("bf16").decode(p)  # no shapes: the declared dtype and order
    assert list(restored) == ["b", "a"] and restored["a"].dtype == torch.bfloat16


# ---- peak memory per payload ----------------------------------------------------------


@pytest.mark.parametrize(("name", "kw"), [("fp32", {}), ("int8", {"block_size": 64}), ("int4", {}),
                                          ("topk", {"fraction": 0.1, "value_dtype": "float32"})])
def test_python_allocations_are_bounded_by_the_payload(name: str, kw: dict) -> None:
    shapes = {"w": (256, 64), "v": (1000,)}
    p = payload_of(name, {k: torch.rand(s) for k, s in shapes.items()}, **kw)
    codec = CODECS.create(name, **kw)
    codec.decode(p, shapes=shapes)  # warm up lazy imports and caches
    tracemalloc.start()
    try:
        codec.decode(p, shapes=shapes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= len(p) + 32 * 1024  # one copy of the data, plus the header's objects


MEASURE = r"""
import gc, json, re, sys
from pathlib import Path
from fedlm.compression.codecs import CODECS
from fedlm.errors import UpdateRejected

def kib(field):
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

shapes = {k: tuple(v) for k, v in json.loads(sys.argv[1]).items()}
results = []
for f in sys.argv[2:]:
    (name, kw), payload = json.loads(Path(f).with_suffix(".json").read_text()), Path(f).read_bytes()
    codec = CODECS.create(name, **kw)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    before = kib("VmRSS")
    try:
        out = codec.decode(payload, shapes=shapes)
        outcome = "accepted"
        del out
    except UpdateRejected as exc:
        outcome = exc.reason
    results.append([outcome, (kib("VmHWM") - before) * 1024])
print(json.dumps(results))
"""


def can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM" in Path("/proc/self/status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not can_reset_peak_rss(), reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_peak_memory_per_payload_is_a_small_multiple_of_the_model(tmp_path: Path) -> None:
    """Peak resident memory of a fresh process while it decodes each payload.

    The model is 4 Mi float32 elements (16 MiB). A hostile top-k payload of 1.5 MiB
    declares a 1 GiB tensor, another 4 GiB; honest payloads of every codec decode the
    whole model. Each decode may raise the process's peak by at most 5 model sizes
    (output, the int codes as floats, one product and one concatenation), measured by
    the kernel, not estimated; the hostile ones by at most 1 MiB.
    """
    shapes = {"a": (2048, 1024), "b": (2 * 2**20,)}
    model_bytes = 4 * sum(math.prod(s) for s in shapes.values())
    g = torch.Generator().manual_seed(0)
    delta = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    cases = [("topk", {"fraction": 0.001}, huge_topk(2**28)), ("topk", {"fraction": 0.001}, huge_topk(2**30 + 5))]
    for name, kw in [("fp32", {}), ("bf16", {}), ("int8", {"block_size": 256}), ("int4", {}),
                     ("topk", {"fraction": 0.05})]:
        cases.append((name, kw, CODECS.create(name, **kw).encode(delta, generator=g)))
    files = []
    for i, (name, kw, p) in enumerate(cases):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(p)
        f.with_suffix(".json").write_text(json.dumps([name, kw]))
        files.append(str(f))
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(shapes), *files],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print([(outcome, round(peak / model_bytes, 2)) for outcome, peak in results])
    assert [r[0] for r in results] == ["names", "names"] + ["accepted"] * 5
    assert all(peak <= 2**20 for _, peak in results[:2]), results
    assert all(peak <= 5 * model_bytes for _, peak in results[2:]), results


# ---- finding 5: no import cycle in the package ------------------------------------------


def test_compression_modules_import_no_cycle() -> None:
    """Every import between compression modules, lazy ones included, forms no cycle."""
    root = Path(payload_module.__file__).parent
    graph: dict[str, set[str]] = {}
    for f in root.glob("*.py"):
        mod = f"fedlm.compression.{f.stem}" if f.stem != "__init__" else "fedlm.compression"
        graph[mod] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedlm.compression."):
                graph[mod].add(node.module)
            elif isinstance(node, ast.Import):
                graph[mod] |= {a.name for a in node.names if a.name.startswith("fedlm.compression.")}
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import cycle: {' -> '.join((*path, mod))}"
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            visit(dep, (*path, mod))
        done.add(mod)

    for mod in graph:
        visit(mod, ())
    assert "fedlm.compression.codecs" not in graph["fedlm.compression.base"]
