import numpy as np
import pytest

from fedlm.privacy.secagg import crypto
from fedlm.privacy.secagg.errors import SecAggError


def test_key_agreement_is_symmetric_and_label_bound():
    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    ab = crypto.agree(a, crypto.public_key(b), label=b"mask", round_id=3)
    ba = crypto.agree(b, crypto.public_key(a), label=b"mask", round_id=3)
    assert ab == ba and len(ab) == 32
    assert crypto.agree(a, crypto.public_key(b), label=b"enc", round_id=3) != ab
    assert crypto.agree(a, crypto.public_key(b), label=b"mask", round_id=4) != ab


def test_a_parsed_key_agrees_exactly_as_its_raw_bytes():
    a, b = crypto.generate_private_key(), crypto.generate_private_key()
    parsed = crypto.private_key(a)
    assert crypto.private_key(parsed) is parsed
    assert crypto.public_key(parsed) == crypto.public_key(a)
    assert crypto.agree(parsed, crypto.public_key(b), label=b"mask", round_id=7) == crypto.agree(
        a, crypto.public_key(b), label=b"mask", round_id=7)


def test_aead_round_trip_and_tamper_detection():
    key = bytes(range(32))
    blob = crypto.encrypt(key, b"share bytes", aad=b"r1|a|b")
    assert crypto.decrypt(key, blob, aad=b"r1|a|b") == b"share bytes"
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad_blob, aad in [(flipped, b"r1|a|b"), (blob, b"r1|a|c")]:
        with pytest.raises(SecAggError) as e:
            crypto.decrypt(key, bad_blob, aad=aad)
        assert e.value.reason == "decrypt_failed"


def test_prg_is_deterministic_per_seed_and_typed():
    s1, s2 = b"\x01" * 32, b"\x02" * 32
    a = crypto.prg(s1, 1000, dtype=crypto.mask_dtype(32))
    assert a.dtype == np.dtype("<u4") and a.shape == (1000,)
    assert np.array_equal(a, crypto.prg(s1, 1000, dtype=crypto.mask_dtype(32)))
    assert not np.array_equal(a, crypto.prg(s2, 1000, dtype=crypto.mask_dtype(32)))
    # A prefix of a longer stream is the shorter stream (CTR mode), and m > 32 uses uint64.
    assert np.array_equal(crypto.prg(s1, 10, dtype=crypto.mask_dtype(32)), a[:10])
    assert crypto.prg(s1, 4, dtype=crypto.mask_dtype(40)).dtype == np.dtype("<u8")
    with pytest.raises(SecAggError):
        crypto.prg(b"short", 4, dtype=crypto.mask_dtype(32))
