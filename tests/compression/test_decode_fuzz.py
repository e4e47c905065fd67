"""Fuzzing update decoding: 60,500 hostile payloads over every registered codec.

Every byte from a client is hostile. For each codec variant (``payload_mutations.VARIANTS``:
fp32/fp16/bf16, int8/int4 per tensor, per block and with a fixed scale, top-k with fp16
and fp32 values) the suite decodes seeded mutations of valid payloads (bit flips,
truncations, extensions, splices, hostile header lengths, header JSON edits: wrong
dtypes, shapes and offsets, huge and negative sizes, null or missing metadata,
duplicated keys, non-UTF-8, NaN) and random bytes, as the server does: with the model's
expected shapes and a byte limit. The properties, for every case:

* the decoder raises nothing but ``UpdateRejected``, with a snake_case reason and a
  detail, and never its last-resort "decode_error" (a check the decoder failed to make);
* an accepted payload decodes to exactly the expected names, in the model's order, with
  the expected shapes, as float32 (finite or not: finiteness is ``Validate``'s job).

Every fourth case is also decoded the way a client decodes its own or the server's
payloads (any registered codec, no expected shapes, a cap on declared elements).

The cases are fixed (seeded ``random.Random``), so a failure names a reproducible
(variant, case) pair. Run with ``-m fuzz``; the unmarked smoke test runs a slice always.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared mutators (as tests/conftest.py does)

from payload_mutations import (
    HOSTILE_INTS,
    HOSTILE_JSON,
    SHAPES,
    VARIANTS,
    Mutator,
    codec,
    honest_payload,
    join,
    split,
)

from fedlm.compression.codecs import decode
from fedlm.compression.payload import DTYPES
from fedlm.errors import UpdateRejected

SEED = 20_240_917
CASES_PER_VARIANT = 5_500  # x 11 variants = 60,500 payloads
SMOKE_CASES = 150
GENERIC_EVERY = 4  # also decode every 4th case without expected shapes
GENERIC_MAX_NUMEL = 4_096
REASON = re.compile(r"^[a-z][a-z0-9_]*$")
OTHER_SHAPES = [
    {"layers.0.q_proj.lora_A": (5, 3), "layers.0.q_proj.lora_B": (5, 3)},  # one shape transposed
    {"layers.0.q_proj.lora_A": (3, 5)},  # a tensor missing
    {**SHAPES, "layers.0.v_proj.lora_A": (2,)},  # a tensor too many
    {"x": (30,)},
]


def payloads(variant: str) -> tuple[list[bytes], list[bytes], bytes]:
    """(valid payloads of the variant, valid payloads the server must still reject, an empty one)."""
    valid = [honest_payload(variant, seed) for seed in range(3)]
    foreign = [honest_payload(v, 7) for v in VARIANTS if VARIANTS[v] != VARIANTS[variant]]
    foreign += [honest_payload(variant, 8, shapes) for shapes in OTHER_SHAPES]
    return valid, foreign, honest_payload(variant, 9, {"empty": (0,), "none": (4, 0)})


def check_accepted(out: dict[str, torch.Tensor]) -> None:
    assert list(out) == list(SHAPES)
    for name, shape in SHAPES.items():
        assert isinstance(out[name], torch.Tensor)
        assert tuple(out[name].shape) == shape and out[name].dtype == torch.float32


def check_generic(payload: bytes) -> str:
    """The client-side path: any registered codec, no expected shapes."""
    try:
        out = decode(payload, max_numel=GENERIC_MAX_NUMEL)
    except UpdateRejected as exc:
        assert exc.reason != "decode_error", exc.detail
        assert REASON.match(exc.reason) and exc.detail, exc
        return exc.reason
    assert isinstance(out, dict) and sum(t.numel() for t in out.values()) <= GENERIC_MAX_NUMEL
    assert all(isinstance(t, torch.Tensor) and t.dtype in DTYPES.values() for t in out.values())
    return "accepted"


def fuzz(variant: str, cases: int) -> tuple[Counter[str], Counter[str]]:
    """Run ``cases`` hostile payloads; return the outcome counts by reason and by mutation."""
    rng = random.Random(f"{SEED}:{variant}")
    valid, foreign, empty = payloads(variant)
    server = codec(variant)
    max_bytes = max(len(p) for p in valid) + 32
    mutate = Mutator(rng, valid, foreign, empty)
    reasons: Counter[str] = Counter()
    accepted_by_kind: Counter[str] = Counter()
    for i in range(cases):
        kind, payload = mutate()
        context = f"{variant} case {i} ({kind})"
        try:
            out = server.decode(payload, shapes=SHAPES, max_bytes=max_bytes)
        except UpdateRejected as exc:
            assert exc.reason != "decode_error", f"{context}: {exc.detail}"
            assert REASON.match(exc.reason) and exc.detail, context
            reasons[exc.reason] += 1
        except Exception as exc:  # the property under test: nothing else ever escapes
            pytest.fail(f"{context}: {type(exc).__name__}: {exc}")
        else:
            check_accepted(out)
            reasons["accepted"] += 1
            accepted_by_kind[kind] += 1
        if i % GENERIC_EVERY == 0:
            try:
                check_generic(payload)
            except AssertionError as exc:
                raise AssertionError(f"{context}, generic decode: {exc}") from None
    return reasons, accepted_by_kind


@pytest.mark.fuzz
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decoding_60k_hostile_payloads_raises_only_update_rejected(variant: str) -> None:
    t0 = time.process_time()
    reasons, accepted_by_kind = fuzz(variant, CASES_PER_VARIANT)
    seconds = time.process_time() - t0
    assert sum(reasons.values()) == CASES_PER_VARIANT
    # the fuzzer reached every layer of checks, and mutated data still decodes
    assert {"accepted", "malformed", "schema", "codec_mismatch", "names", "shape", "too_large"} <= set(reasons), reasons
    assert accepted_by_kind["flip_data"] > 0, accepted_by_kind
    print(f"{variant}: {CASES_PER_VARIANT} cases in {seconds:.1f} s CPU; {dict(reasons)}")


def test_decode_fuzz_smoke() -> None:
    """A slice of the fuzz suite for every run (the full suite is marked ``fuzz``)."""
    for variant in sorted(VARIANTS):
        reasons, _ = fuzz(variant, SMOKE_CASES)
        assert sum(reasons.values()) == SMOKE_CASES and "malformed" in reasons


def test_every_registered_codec_is_fuzzed() -> None:
    from fedlm.compression.codecs import CODECS

    assert {name for name, _ in VARIANTS.values()} == set(CODECS.names())


PARAM_VALUES = [*HOSTILE_INTS, *HOSTILE_JSON, 1e-12, 1e-320, 0.5, 1.0, 3.4e38, "float32", "float16", "int8"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_hostile_codec_parameter_is_rejected_or_decoded(variant: str) -> None:
    """Exhaustively: each parameter key x each hostile value, through the registry path.

    The client-side decode builds the codec the payload names from the payload's own
    parameters, so these reach codec constructors and decoders directly.
    """
    valid = honest_payload(variant, 0)
    header, data = split(valid)
    for key in ["block_size", "fixed_scale", "fraction", "value_dtype", "bits", "dtype"]:
        for value in PARAM_VALUES:
            params = {**json.loads(header["__metadata__"]["params"]), key: value}
            meta = {**header["__metadata__"], "params": json.dumps(params)}
            outcome = check_generic(join({**header, "__metadata__": meta}, data))
            assert outcome in {"accepted", "malformed"}, (key, value, outcome)
