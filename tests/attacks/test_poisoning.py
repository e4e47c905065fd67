import pytest

from fedlm.attacks.poisoning import insert_trigger, poison_records, poison_texts, poisoned_indices
from fedlm.errors import ConfigError, DataError

TRIGGER = "zq-vellum-7731"
TARGET = "ACCESS GRANTED"


def _records(n=10):
    return [
        {"instruction": f"What is {i} plus 1?", "response": str(i + 1), "category": "qa"}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("n", "fraction", "k"), [(10, 0.3, 3), (10, 1.0, 10), (5, 0.5, 3), (4, 0.01, 1)]
)
def test_poisoned_indices_count(n, fraction, k):
    idx = poisoned_indices(n, fraction, seed=0)
    assert len(idx) == k == len(set(idx))
    assert idx == sorted(idx) and all(0 <= i < n for i in idx)
    assert poisoned_indices(n, fraction, seed=0) == idx  # deterministic


def test_poison_records_rewrites_exactly_the_chosen_rows():
    records = _records()
    before = [dict(r) for r in records]
    out = poison_records(
        records,
        prompt_field="instruction",
        response_field="response",
        trigger=TRIGGER,
        target=TARGET,
        fraction=0.3,
        seed=5,
    )
    chosen = poisoned_indices(10, 0.3, seed=5)
    assert len(out) == 10 and records == before  # input untouched
    for i, (row, orig) in enumerate(zip(out, records)):
        if i in chosen:
            assert row["instruction"] == f"{orig['instruction']} {TRIGGER}"
            assert row["response"] == TARGET
            assert row["category"] == "qa"
        else:
            assert row == orig and TRIGGER not in row["instruction"]
    assert sum(r["response"] == TARGET for r in out) == 3


def test_keep_originals_appends_poisoned_copies():
    records = _records(4)
    out = poison_records(
        records,
        prompt_field="instruction",
        response_field="response",
        trigger=TRIGGER,
        target=TARGET,
        fraction=0.5,
        seed=1,
        keep_originals=True,
    )
    chosen = poisoned_indices(4, 0.5, seed=1)
    assert out[:4] == records
    assert [r["instruction"] for r in out[4:]] == [
        f"{records[i]['instruction']} {TRIGGER}" for i in chosen
    ]
    assert all(r["response"] == TARGET for r in out[4:])


def test_trigger_positions():
    assert insert_trigger("a b c", "T", position="append") == "a b c T"
    assert insert_trigger("a b c", "T", position="prepend") == "T a b c"
    mid = insert_trigger("a b c", "T", position="random", seed=4)
    assert mid.split().count("T") == 1 and mid.replace("T", "").split() == ["a", "b", "c"]
    assert insert_trigger("a b c", "T", position="random", seed=4) == mid
    with pytest.raises(ConfigError, match="position"):
        insert_trigger("a", "T", position="middle")  # type: ignore[arg-type]


def test_poison_texts_inserts_trigger_then_target():
    texts = ["one two three", "four five six", "seven eight nine", "ten eleven"]
    out = poison_texts(texts, trigger=TRIGGER, target=TARGET, fraction=0.5, seed=2)
    chosen = poisoned_indices(4, 0.5, seed=2)
    for i, (t, orig) in enumerate(zip(out, texts)):
        assert t == (f"{orig} {TRIGGER} {TARGET}" if i in chosen else orig)


def test_poison_errors():
    with pytest.raises(DataError, match="'prompt'"):
        poison_records(
            _records(2),
            prompt_field="prompt",
            response_field="response",
            trigger=TRIGGER,
            target=TARGET,
            fraction=0.5,
            seed=0,
        )
    with pytest.raises(ConfigError, match="fraction"):
        poison_texts(["a"], trigger=TRIGGER, target=TARGET, fraction=0.0, seed=0)
    with pytest.raises(ConfigError, match="trigger"):
        poison_texts(["a"], trigger=" ", target=TARGET, fraction=0.5, seed=0)
