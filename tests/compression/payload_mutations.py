"""Hostile payloads for the fuzz suites: seeded mutations of valid payloads, and random bytes.

Shared by ``tests/compression/test_decode_fuzz.py`` (the decoder alone, every codec) and
``tests/aggregation/test_intake_fuzz.py`` (the server's whole intake). Everything is drawn
from a ``random.Random`` the caller seeds, so a failing case is reproduced by its seed and
index; no hypothesis here, because 60,000 cases must run in well under a minute.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import torch

from fedlm.compression.codecs import CODECS, Codec
from fedlm.compression.stages import derive_generator

# The model the server expects: odd sizes (no block divides them, int4 pads a nibble).
SHAPES: dict[str, tuple[int, ...]] = {"layers.0.q_proj.lora_A": (3, 5), "layers.0.q_proj.lora_B": (5, 3)}

# Every registered codec, per-tensor, per-block and fixed-scale where they apply.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "bf16": ("bf16", {}),
    "int8": ("int8", {}),
    "int8-block4": ("int8", {"block_size": 4}),
    "int8-fixed": ("int8", {"fixed_scale": 1.0}),
    "int4": ("int4", {}),
    "int4-block4": ("int4", {"block_size": 4}),
    "int4-fixed": ("int4", {"fixed_scale": 1.0}),
    "topk": ("topk", {"fraction": 0.4}),
    "topk-f32": ("topk", {"fraction": 0.4, "value_dtype": "float32"}),
}

ST_CODES = ["F32", "F16", "BF16", "I8", "U8", "I32", "I64", "F64", "BOOL", "F8_E4M3", "U64", "x", 3, None, ["F32"]]
HOSTILE_INTS = [-1, -(2**63), 0, 1, 2, 7, 15, 16, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
HOSTILE_JSON = [None, True, 1.5, "3", [], {}, [[1]], -0.0, 1e308, "NaN"]


def codec(variant: str) -> Codec:
    name, kw = VARIANTS[variant]
    return CODECS.create(name, **kw)


def honest_update(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    """A plausible delta (|x| < 1, so fixed_scale=1.0 codecs accept it)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(s, generator=g) * 1.6 - 0.8) for k, s in shapes.items()}


def honest_payload(variant: str, seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> bytes:
    return codec(variant).encode(honest_update(seed, shapes), generator=derive_generator(seed, variant))


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(header as a dict, data bytes) of a valid payload."""
    n = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + n]), payload[8 + n :]


def join(header: Any, data: bytes, *, raw: bytes | None = None) -> bytes:
    """A payload from a header (serialised unless ``raw`` header bytes are given) and data."""
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    return len(text).to_bytes(8, "little") + text + data


class Mutator:
    """Draws hostile payloads for one codec variant from a seeded ``random.Random``.

    Args:
        rng: the source of every choice.
        valid: valid payloads of the variant (for the expected shapes).
        foreign: valid payloads of other variants and other shapes.
        empty: a valid payload of the variant whose tensors have no elements, if any.
    """

    def __init__(
        self, rng: random.Random, valid: list[bytes], foreign: list[bytes], empty: bytes | None = None
    ) -> None:
        self.rng = rng
        self.valid = valid
        self.foreign = foreign
        self.parsed = [split(p) for p in valid]
        self.empty = split(empty) if empty is not None else None
        kinds: list[tuple[Callable[[], bytes], int]] = [
            (self.random_bytes, 2),
            (self.random_header, 2),
            (self.flip_bits, 3),
            (self.flip_data, 4),
            (self.set_bytes, 2),
            (self.truncate, 2),
            (self.extend, 1),
            (self.splice, 2),
            (self.header_length, 1),
            (self.edit_tensor_entry, 4),
            (self.edit_metadata, 5),
            (self.edit_entries, 5),
            (self.edit_structure, 2),
            (self.text_edit, 3),
            (self.zero_sized, 1 if empty is not None else 0),
            (self.intact, 1),
        ]
        self.kinds = [k for k, _ in kinds]
        self.weights = [w for _, w in kinds]

    def __call__(self) -> tuple[str, bytes]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        return kind.__name__, kind()

    # -- byte-level ---------------------------------------------------------------------
    def base(self) -> bytes:
        return self.rng.choice(self.valid)

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(0, 300))

    def random_header(self) -> bytes:
        body = self.rng.choice([
            self.rng.randbytes(self.rng.randrange(0, 200)),
            json.dumps(self.rng.choice(HOSTILE_JSON)).encode(),
            b'{"__metadata__":{"fedlm_schema":"1"}}',
            b'{"__metadata__":null}',
            b"[" * self.rng.randrange(1, 5000),
            b'{"a":' * 3000,
        ])
        return join(None, self.rng.randbytes(self.rng.randrange(0, 64)), raw=body)

    def flip_bits(self) -> bytes:
        buf = bytearray(self.base())
        for _ in range(self.rng.randrange(1, 9)):
            i = self.rng.randrange(len(buf))
            buf[i] ^= 1 << self.rng.randrange(8)
        return bytes(buf)

    def flip_data(self) -> bytes:
        """Bits flipped in the tensor data only: the header stays valid, values go wild."""
        p = self.base()
        start = 8 + int.from_bytes(p[:8], "little")
        buf = bytearray(p)
        for _ in range(self.rng.randrange(1, 5)):
            if start < len(buf):
                i = self.rng.randrange(start, len(buf))
                buf[i] = self.rng.randrange(256) if self.rng.random() < 0.3 else buf[i] ^ (1 << self.rng.randrange(8))
        return bytes(buf)

    def set_bytes(self) -> bytes:
        buf = bytearray(self.base())
        for _ in range(self.rng.randrange(1, 5)):
            buf[self.rng.randrange(len(buf))] = self.rng.choice([0, 0xFF, 0x80, 0x7F, ord('"'), ord("{"), ord("-")])
        return bytes(buf)

    def truncate(self) -> bytes:
        p = self.base()
        return p[: self.rng.randrange(len(p))]

    def extend(self) -> bytes:
        return self.base() + self.rng.randbytes(self.rng.randrange(1, 64))

    def splice(self) -> bytes:
        a, b = self.base(), self.rng.choice(self.foreign + self.valid)
        cut = self.rng.randrange(min(len(a), len(b)))
        return a[:cut] + b[cut:]

    def header_length(self) -> bytes:
        p = self.base()
        n = self.rng.choice([*HOSTILE_INTS[2:6], 2**64 - 1, len(p), len(p) - 8, int.from_bytes(p[:8], "little") + 1])
        return (n % 2**64).to_bytes(8, "little") + p[8:]

    def intact(self) -> bytes:
        """A valid payload, or one of another codec or other shapes."""
        return self.base() if self.rng.random() < 0.5 else self.rng.choice(self.foreign)

    # -- header JSON edits ----------------------------------------------------------------
    def header(self) -> tuple[dict[str, Any], bytes]:
        header, data = self.rng.choice(self.parsed)
        return json.loads(json.dumps(header)), data

    def edit_tensor_entry(self) -> bytes:
        """A stored part's dtype, shape or offsets made hostile."""
        header, data = self.header()
        names = [k for k in header if k != "__metadata__"]
        entry = header[self.rng.choice(names)]
        field = self.rng.choice(["dtype", "shape", "data_offsets", "extra", "drop", "replace"])
        r = self.rng
        if field == "dtype":
            entry["dtype"] = r.choice(ST_CODES)
        elif field == "shape":
            entry["shape"] = r.choice([[], [r.choice(HOSTILE_INTS)], [r.choice(HOSTILE_INTS)] * 2, "3", [1.5], [True],
                                       [[2]], None, [entry["shape"][0] + r.choice([-1, 1])], [0], [2**62, 4, 0]])
        elif field == "data_offsets":
            a, b = entry["data_offsets"]
            entry["data_offsets"] = r.choice([[b, a], [a, b + 1], [a - 1, b], [a, r.choice(HOSTILE_INTS)],
                                              [r.choice(HOSTILE_INTS), b], [a], [a, b, b], None, [str(a), b], [0, b - a]])
        elif field == "extra":
            entry[r.choice(["dtype2", "offsets", ""])] = 1
        elif field == "drop":
            entry.pop(r.choice(["dtype", "shape", "data_offsets"]))
        else:
            header[r.choice(names)] = r.choice(HOSTILE_JSON)
        return join(header, data)

    def edit_metadata(self) -> bytes:
        """The ``__metadata__`` block or its codec/params/schema made hostile."""
        header, data = self.header()
        meta = header["__metadata__"]
        r = self.rng
        op = r.choice(["null", "missing", "type", "schema", "value", "drop", "codec", "params", "params_near"])
        if op == "null":
            header["__metadata__"] = None
        elif op == "missing":
            header.pop("__metadata__")
        elif op == "type":
            header["__metadata__"] = r.choice([[], "x", 1, [["codec", "fp32"]]])
        elif op == "schema":
            meta["fedlm_schema"] = r.choice(["2", "", 1, None, "1 "])
        elif op == "value":
            meta[r.choice(list(meta))] = r.choice(HOSTILE_JSON)
        elif op == "drop":
            meta.pop(r.choice(["codec", "params", "tensors"]))
        elif op == "codec":
            meta["codec"] = r.choice([*CODECS.names(), "gzip", "", "FP32", "int8 "])
        elif op == "params":
            meta["params"] = r.choice(["", "{", "null", "[]", "NaN", '{"a":1,"a":2}', "[" * 3000, "1" * 5000,
                                       json.dumps(r.choice(HOSTILE_JSON))])
        else:
            params = json.loads(meta["params"])
            key = r.choice(["block_size", "fixed_scale", "fraction", "value_dtype", "bits", "extra"])
            params[key] = r.choice([*HOSTILE_INTS, *HOSTILE_JSON, 1e-12, 0.5, 1.0, "float32", "int8"])
            meta["params"] = json.dumps(params)
        return join(header, data)

    def edit_entries(self) -> bytes:
        """The ``tensors`` metadata (declared names, shapes, dtypes) made hostile."""
        header, data = self.header()
        meta = header["__metadata__"]
        entries = json.loads(meta["tensors"])
        r = self.rng
        i = r.randrange(len(entries))
        op = r.choice(["name", "shape", "huge", "negative", "dtype", "duplicate", "drop", "add", "swap", "type", "raw"])
        if op == "name":
            entries[i][0] = r.choice(["", "x", entries[1 - i][0], entries[i][0] + " ", "\ud800", "é" * 40, 3])
        elif op == "shape":
            entries[i][1] = r.choice([[], [15], [5, 3], [3, 5, 1], [1, 3, 5], [16], [0], [2**31], [3, -5]])
        elif op == "huge":
            entries[i][1] = r.choice([[2**40], [2**31, 2**31], [2**62, 4], [10**30], [2**63 - 1], [2**62, 4, 0]])
        elif op == "negative":
            entries[i][1] = [-d for d in entries[i][1]]
        elif op == "dtype":
            entries[i][2] = r.choice(["float64", "int8", "float8", "", None, "torch.float32", "bfloat16"])
        elif op == "duplicate":
            entries.append(list(entries[i]))
        elif op == "drop":
            entries.pop(i)
        elif op == "add":
            entries.append(["extra", [r.choice([1, 2, 2**40])], "float32"])
        elif op == "swap":
            entries.reverse()
        elif op == "type":
            entries = r.choice([None, {}, "x", [None], [["a", [1]]], [[1, [1], "float32"]]])
        else:
            meta["tensors"] = r.choice(["", "[", "[" * 4000, '[["a",[1],"float32"]', "NaN", "\x00"])
            return join(header, data)
        meta["tensors"] = json.dumps(entries)
        return join(header, data)

    def edit_structure(self) -> bytes:
        """The header's shape: not an object, a part dropped, duplicated or added."""
        header, data = self.header()
        r = self.rng
        names = [k for k in header if k != "__metadata__"]
        op = r.choice(["not_object", "drop_part", "add_part", "rename_part", "empty"])
        if op == "not_object":
            return join(r.choice([[], None, 1, "x", [header]]), data)
        if op == "drop_part":
            header.pop(r.choice(names))
        elif op == "add_part":
            end = max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")
            header[f"{len(names)}.v"] = {"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]}
            data += bytes(4)
        elif op == "rename_part":
            header[r.choice(["9.v", "0.x", "-1.q", "0.q.q", ""])] = header.pop(r.choice(names))
        else:
            header = {"__metadata__": header["__metadata__"]}
            data = b""
        return join(header, data)

    def zero_sized(self) -> bytes:
        """A valid payload of empty tensors whose shapes (declared or stored) hide huge sizes."""
        assert self.empty is not None
        header, data = json.loads(json.dumps(self.empty[0])), self.empty[1]
        r = self.rng
        hostile = r.choice([[2**62, 4, 0], [0, 2**63 - 1], [2**31, 2**31, 2**31, 0], [0], [0, 0], [2**62, 0, 4]])
        if r.random() < 0.5:
            meta = header["__metadata__"]
            meta["tensors"] = json.dumps([[n, hostile, d] for n, _, d in json.loads(meta["tensors"])])
        else:
            for k, e in header.items():
                if k != "__metadata__" and e["data_offsets"][0] == e["data_offsets"][1]:
                    e["shape"] = hostile
        return join(header, data)

    def text_edit(self) -> bytes:
        """Edits a dict cannot express: duplicated keys, non-UTF-8 bytes, NaN, giant numbers."""
        p = self.base()
        n = int.from_bytes(p[:8], "little")
        text, data = p[8 : 8 + n].rstrip(b" "), p[8 + n :]
        r = self.rng
        op = r.choice(["dup_meta", "dup_part", "non_utf8", "nan", "big_int", "bom", "padding"])
        if op == "dup_meta":
            text = b'{"__metadata__":{"fedlm_schema":"1"},' + text[1:]
        elif op == "dup_part":
            first = text.index(b'"0.')  # a part's "key":{...} pair, written twice (plain json keeps the last)
            text = text[:first] + text[first : text.index(b"}", first) + 1] + b"," + text[first:]
        elif op == "non_utf8":
            i = r.randrange(1, len(text) - 1)
            text = text[:i] + r.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80"]) + text[i:]
        elif op == "nan":
            text = text.replace(b'"shape":[', b'"shape":[' + r.choice([b"NaN,", b"Infinity,", b"-Infinity,", b"1e999,"]), 1)
        elif op == "big_int":
            text = text.replace(b'"data_offsets":[0,', b'"data_offsets":[' + b"9" * r.choice([20, 400, 5000]) + b",", 1)
        elif op == "bom":
            text = b"\xef\xbb\xbf" + text
        else:
            text = text + b" " * r.randrange(0, 9) + r.choice([b"", b"x", b"\x00", b"}"])
        return join(None, data, raw=text)
