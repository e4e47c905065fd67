import pytest

from fedlm.errors import ConfigError
from fedlm.privacy.canaries import (
    Canary,
    canary_placement,
    choose_canary_clients,
    insert_canaries,
    make_canaries,
    sample_candidates,
)


def test_make_canaries_is_seeded_and_formatted():
    a = make_canaries(5, seed=3)
    assert a == make_canaries(5, seed=3)
    assert [c.secret for c in a] != [c.secret for c in make_canaries(5, seed=4)]
    assert len({c.secret for c in a}) == 5
    for c in a:
        assert len(c.secret) == 6 and c.secret.isdigit()
        assert c.text == f"my secret code is {c.secret}"
        assert c.prefix == "my secret code is "
        assert c.space_size == 10**6


def test_make_canaries_custom_format_and_whole_small_space():
    cs = make_canaries(4, seed=0, template="pin: {}!", alphabet="ab", length=2)
    assert sorted(c.secret for c in cs) == ["aa", "ab", "ba", "bb"]
    assert all(c.text == f"pin: {c.secret}!" and c.with_secret("zz") == "pin: zz!" for c in cs)
    with pytest.raises(ConfigError, match=r"number of canaries must be in \[0, 4\]"):
        make_canaries(5, seed=0, template="pin: {}!", alphabet="ab", length=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"template": "no slot"}, "exactly once"),
        ({"template": "{} and {}"}, "exactly once"),
        ({"alphabet": "0"}, "at least 2 distinct"),
        ({"alphabet": "001"}, "no repeats"),
        ({"length": 0}, "length must be >= 1"),
    ],
)
def test_make_canaries_rejects_bad_formats(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_canaries(1, seed=0, **kwargs)


def test_sample_candidates_are_distinct_same_format_and_exclude_planted():
    canary = make_canaries(1, seed=0)[0]
    other = "123456"
    cands = sample_candidates(canary, 500, seed=7, exclude={other})
    assert cands == sample_candidates(canary, 500, seed=7, exclude={other})
    assert len(set(cands)) == 500
    assert canary.secret not in cands and other not in cands
    assert all(len(s) == 6 and s.isdigit() for s in cands)


def test_sample_candidates_in_a_small_space_takes_everything_else():
    canary = Canary("x 010", "010", "x {}", "01")
    assert sorted(sample_candidates(canary, 7, seed=0)) == sorted(
        f"{i:03b}" for i in range(8) if f"{i:03b}" != "010"
    )
    with pytest.raises(ConfigError, match=r"candidates must be in \[0, 6\]"):
        sample_candidates(canary, 7, seed=0, exclude={"111"})


def test_canary_placement_is_round_robin():
    cs = make_canaries(5, seed=0)
    placed = canary_placement(cs, ["b", "a"])
    assert placed == {"b": [cs[0], cs[2], cs[4]], "a": [cs[1], cs[3]]}
    with pytest.raises(ConfigError, match="must not repeat"):
        canary_placement(cs, ["a", "a"])
    with pytest.raises(ConfigError, match="at least one client"):
        canary_placement(cs, [])


def test_choose_canary_clients_is_seeded_subset():
    ids = [f"c{i}" for i in range(10)]
    got = choose_canary_clients(ids, n=3, seed=1)
    assert got == choose_canary_clients(list(reversed(ids)), n=3, seed=1)
    assert len(got) == 3 and got == sorted(got) and set(got) <= set(ids)
    assert choose_canary_clients(ids, n=50, seed=1) == sorted(ids)


def _strip(texts, secrets):
    return [t for t in texts if not any(t.endswith(s) and t.startswith("my secret") for s in secrets)]


def test_insert_into_client_texts_puts_exact_copies_in_chosen_clients_only():
    data = {c: [f"{c} text {i}" for i in range(8)] for c in ("a", "b", "c")}
    frozen = {c: list(t) for c, t in data.items()}
    cs = make_canaries(3, seed=0)
    out = insert_canaries(data, cs, clients=["c", "a"], repeats=4, seed=11)
    assert data == frozen  # input untouched
    assert out == insert_canaries(data, cs, clients=["c", "a"], repeats=4, seed=11)
    # canary 0 and 2 -> "c", canary 1 -> "a"; b unchanged
    assert out["b"] == data["b"]
    assert [out["c"].count(cs[i].text) for i in range(3)] == [4, 0, 4]
    assert [out["a"].count(cs[i].text) for i in range(3)] == [0, 4, 0]
    assert len(out["c"]) == 16 and len(out["a"]) == 12
    secrets = [c.secret for c in cs]
    assert _strip(out["c"], secrets) == data["c"] and _strip(out["a"], secrets) == data["a"]
    # positions depend on the seed (and only on it)
    moved = insert_canaries(data, cs, clients=["c", "a"], repeats=4, seed=12)
    assert moved["c"] != out["c"] and sorted(moved["c"]) == sorted(out["c"])
    # and not on the other clients
    assert insert_canaries({"c": data["c"]}, cs[::2], clients=["c"], repeats=4, seed=11) == {"c": out["c"]}


def test_insert_into_records_keeps_other_records_in_place():
    records = [{"client": "ab"[i % 2], "text": f"row {i}"} for i in range(10)]
    records.insert(3, {"text": "no client"})
    cs = make_canaries(2, seed=5)
    out = insert_canaries(records, cs, clients=["b"], repeats=3, seed=0)
    assert out == insert_canaries(records, cs, clients=["b"], repeats=3, seed=0)
    assert len(out) == len(records) + 6
    planted = [r for r in out if r["text"].startswith("my secret")]
    assert sorted(r["text"] for r in planted) == sorted([cs[0].text] * 3 + [cs[1].text] * 3)
    assert all(r == {"client": "b", "text": r["text"]} for r in planted)
    # every original record survives, in its original order across all clients
    assert [r for r in out if not r["text"].startswith("my secret")] == records
    # a client's placement does not depend on the other clients
    only_b = [r for r in records if r.get("client") == "b"]
    alone = insert_canaries(only_b, cs, clients=["b"], repeats=3, seed=0)
    assert alone == [r for r in out if r.get("client") == "b"]


def test_insert_rejects_unknown_clients_and_bad_repeats():
    data = {"a": ["x"], "b": ["y"]}
    cs = make_canaries(1, seed=0)
    with pytest.raises(ConfigError, match=r"\['zz'\] are not in the data"):
        insert_canaries(data, cs, clients=["zz"], repeats=1, seed=0)
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        insert_canaries(data, cs, clients=["a"], repeats=0, seed=0)
    with pytest.raises(ConfigError, match="'who' field"):
        insert_canaries([{"who": "a", "text": "t"}], cs, clients=["q"], repeats=1, seed=0, client_field="who")
