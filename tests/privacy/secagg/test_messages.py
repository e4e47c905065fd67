import numpy as np
import pytest

from fedlm.privacy.secagg.codec import pack_words, unpack_words
from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    NeighbourKeys,
    Setup,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
    decode,
)

K1, K2 = b"\x01" * 32, b"\x02" * 32
SAMPLES = [
    Setup(5, "a", ("a", "b", "ü"), 123, 2, 2, 1000, 32, 16, 0.5, 3),
    AdvertiseKeys(5, "a", K1, K2),
    NeighbourKeys(5, "a", (("b", K1, K2), ("c", K2, K1))),
    ShareKeys(5, "a", (("b", b"xyz"), ("c", b""))),
    ForwardedShares(5, "a", (("b", b"xyz"),)),
    UnmaskRequest(5, "a", ("a", "b")),
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
        decode(bytes([2]) + data[1:])
    assert e.value.reason == "version"


def test_advertise_keys_exact_size():
    # header 10 + id (2 + 1) + two blobs (4 + 32 each)
    assert len(AdvertiseKeys(1, "a", K1, K2).to_bytes()) == 10 + 3 + 72


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
        AdvertiseKeys(1, "a", b"\x01" * 31, K2)
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        NeighbourKeys(1, "a", (("b", K1, b""),))
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        MaskedInput(1, "a", 32, np.zeros(3, np.uint64))
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        decode(b"\x01\x63" + bytes(8))
    assert e.value.reason == "malformed"
