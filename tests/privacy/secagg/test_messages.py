import numpy as np
import pytest

from fedlm.privacy.secagg.codec import pack_words, unpack_words
from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.messages import (
    VERSION,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode,
)

K1, K2, K3, SIG = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64
SAMPLES = [
    Setup(5, "a", ("a", "b", "ü"), 123, 2, 2, 1000, 32, 16, 0.5, 3),
    AdvertiseKeys(5, "a", K1, K2, K3, SIG),
    AdvertiseKeys(5, "a", K1, K2, K3),  # unauthenticated: no signature
    NeighbourKeys(5, "a", (("b", K1, K2, SIG), ("c", K2, K1, b""))),
    ShareKeys(5, "a", (("b", b"xyz"), ("c", b""))),
    ForwardedShares(5, "a", (("b", b"xyz"),)),
    ConsistencyRequest(5, "a", ("a", "b")),
    ConsistencySignature(5, "a", SIG),
    UnmaskRequest(5, "a", ("a", "b")),
    UnmaskRequest(5, "a", ("a", "b"), (("b", SIG),)),
    UnmaskShares(5, "a", (("b", b"s1"),), (("c", b"s2"), ("d", b"s3"))),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = msg.to_bytes()
    assert decode(data) == msg
    with pytest.raises(SecAggError) as e:
        decode(data[:-1])
    assert e.value.reason == "malformed"
    with pytest.raises(SecAggError) as e:
        decode(data + b"\x00")
    assert e.value.reason == "malformed"
    with pytest.raises(SecAggError) as e:
        decode(bytes([VERSION + 1]) + data[1:])
    assert e.value.reason == "version"


def test_advertise_keys_exact_size():
    # header 10 + id (2 + 1) + three 32-byte blobs (4 + 32 each) + the signature (4 + 64 or 4 + 0)
    assert len(AdvertiseKeys(1, "a", K1, K2, K3, SIG).to_bytes()) == 10 + 3 + 108 + 68
    assert len(AdvertiseKeys(1, "a", K1, K2, K3).to_bytes()) == 10 + 3 + 108 + 4


@pytest.mark.parametrize("m", [8, 20, 24, 32, 40, 64])
def test_masked_input_round_trip_and_packing(m):
    dtype = np.dtype("<u4") if m <= 32 else np.dtype("<u8")
    values = np.random.default_rng(m).integers(0, 1 << m, size=1000, dtype=np.uint64).astype(dtype)
    values[0] = (1 << m) - 1  # the largest value survives packing
    msg = MaskedInput(1, "a", m, values)
    data = msg.to_bytes()
    assert len(data) == 10 + 3 + 1 + 8 + 1000 * ((m + 7) // 8)
    back = decode(data)
    assert isinstance(back, MaskedInput) and back.modulus_bits == m
    assert np.array_equal(back.values, values)
    assert np.array_equal(
        unpack_words(pack_words(values, modulus_bits=m), n=1000, modulus_bits=m), values
    )


def test_construction_validates_sizes():
    with pytest.raises(SecAggError) as e:
        AdvertiseKeys(1, "a", b"\x01" * 31, K2, K3)
    assert e.value.reason == "wrong_size"
    for bad in (
        lambda: AdvertiseKeys(1, "a", K1, K2),  # no seed commitment
        lambda: AdvertiseKeys(1, "a", K1, K2, K3, b"\x04" * 63),
        lambda: ConsistencySignature(1, "a", b""),  # the consistency signature is mandatory
        lambda: UnmaskRequest(1, "a", ("a",), (("b", b"short"),)),
    ):
        with pytest.raises(SecAggError) as e:
            bad()
        assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        NeighbourKeys(1, "a", (("b", K1, b"", b""),))
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        MaskedInput(1, "a", 32, np.zeros(3, np.uint64))
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        decode(bytes([VERSION, 0x63]) + bytes(8))
    assert e.value.reason == "malformed"


def test_fields_that_do_not_fit_their_length_prefix_are_refused_when_encoded():
    from fedlm.privacy.secagg.codec import Reader, Writer

    w = Writer()
    for too_big in (lambda: w.text("x" * 65_536), lambda: w.u32(1 << 32), lambda: w.u8(-1)):
        with pytest.raises(SecAggError) as e:
            too_big()
        assert e.value.reason == "wrong_size"
    w.text("é" * 3)  # 6 bytes of UTF-8
    w.u64(2**64 - 1)
    r = Reader(b"".join(w.parts), 0)
    assert (r.text(), r.u64()) == ("é" * 3, 2**64 - 1)
    with pytest.raises(SecAggError) as e:
        r.u8()  # nothing left
    assert e.value.reason == "malformed"
