import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlm.privacy.secagg.errors import SecAggError
from fedlm.privacy.secagg.shamir import PRIME, Share, n_chunks, reconstruct, split


@st.composite
def sharing(draw):
    n = draw(st.integers(min_value=2, max_value=12))
    t = draw(st.integers(min_value=2, max_value=n))
    secret = draw(st.binary(min_size=0, max_size=70))
    xs = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    subset = draw(st.permutations(range(n)))
    return secret, t, xs, subset


@settings(max_examples=150, deadline=None)
@given(sharing())
def test_any_t_shares_reconstruct(case):
    secret, t, xs, order = case
    shares = split(secret, threshold=t, xs=xs)
    picked = [shares[i] for i in order[:t]]
    assert reconstruct(picked, threshold=t, secret_len=len(secret)) == secret


@settings(max_examples=150, deadline=None)
@given(sharing())
def test_t_minus_one_shares_do_not_give_the_secret(case):
    secret, t, xs, order = case
    shares = split(secret, threshold=t, xs=xs)
    picked = [shares[i] for i in order[: t - 1]]
    with pytest.raises(SecAggError):  # too few for the stated threshold
        reconstruct(picked, threshold=t, secret_len=len(secret))
    # Interpolating the t - 1 points as if the threshold were t - 1 yields another
    # value (or an undecodable chunk): a degree t-1 polynomial is not pinned down.
    try:
        guess = reconstruct(picked, threshold=t - 1, secret_len=len(secret))
    except SecAggError:
        return
    assert guess != secret or len(secret) == 0


def test_shares_of_one_secret_look_independent_of_it():
    # Same x, t=2: the single share of two different secrets is a fresh uniform value,
    # so two sharings of the same secret almost surely differ too.
    a = split(b"\x01" * 32, threshold=2, xs=[1, 2])[0]
    b = split(b"\x01" * 32, threshold=2, xs=[1, 2])[0]
    assert a.x == b.x == 1 and a.ys != b.ys


def test_hand_worked_degree_one_polynomial():
    # f(x) = s + a x with s = 5: shares (1, 5 + a), (2, 5 + 2a) -> f(0) = 2 f(1) - f(2) = 5.
    shares = [Share(1, (12,)), Share(2, (19,))]  # a = 7
    assert reconstruct(shares, threshold=2, secret_len=1) == b"\x05"


def test_32_byte_secret_uses_three_chunks_and_52_byte_shares():
    assert n_chunks(32) == 3
    shares = split(bytes(range(32)), threshold=3, xs=[3, 9, 4, 1])
    raw = shares[0].to_bytes()
    assert len(raw) == 52
    assert Share.from_bytes(raw, secret_len=32) == shares[0]
    assert reconstruct(shares[1:], threshold=3, secret_len=32) == bytes(range(32))


def test_bad_inputs_are_rejected():
    with pytest.raises(SecAggError) as e:
        split(b"x", threshold=2, xs=[1, 1])
    assert e.value.reason == "malformed"
    with pytest.raises(SecAggError):
        split(b"x", threshold=3, xs=[1, 2])
    with pytest.raises(SecAggError) as e:
        Share.from_bytes(b"\x00" * 51, secret_len=32)
    assert e.value.reason == "wrong_size"
    with pytest.raises(SecAggError) as e:
        Share.from_bytes((1).to_bytes(4, "big") + PRIME.to_bytes(16, "big") * 3, secret_len=32)
    assert e.value.reason == "malformed"


def test_share_values_are_the_polynomial_reduced_mod_the_prime():
    from fedlm.privacy.secagg.shamir import _evaluate

    assert _evaluate([3, 2, 1], 5) == 3 + 2 * 5 + 25
    # 40 coefficients near the prime at the largest share point: the value is reduced
    # once at the end, so it must still equal step-by-step reduction.
    poly = [PRIME - 1 - i for i in range(40)]
    x = 2**32 - 1
    expected = sum(a * pow(x, k, PRIME) for k, a in enumerate(poly)) % PRIME
    assert _evaluate(poly, x) == expected
