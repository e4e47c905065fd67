"""SQuAD exact match and ROUGE-L F1 against hand-computed values."""

from __future__ import annotations

import pytest

from fedlm.eval.text_metrics import (
    exact_match,
    lcs_length,
    normalize_answer,
    rouge_l_f1,
    rouge_tokens,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Heart, (mostly)!", "heart mostly"),
        ("An apple a day", "apple day"),
        ("theory of the atom", "theory of atom"),  # 'the' inside 'theory' stays
        ("  Insulin.\n", "insulin"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_normalises_and_takes_best_reference() -> None:
    assert exact_match("The insulin.", "insulin") == 1.0
    assert exact_match("insulin", "glucagon") == 0.0
    assert exact_match("glucagon!", ["insulin", "Glucagon"]) == 1.0
    assert exact_match("insulin pump", "insulin") == 0.0


def test_lcs_length_by_hand() -> None:
    # a b c b d a b  vs  b d c a b a: a classic LCS of length 4 (b c b a / b d a b ...)
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["x"]) == 0
    assert lcs_length(["x", "y"], ["y", "x"]) == 1


def test_rouge_l_f1_by_hand() -> None:
    # pred: the cat sat on the mat (6), ref: the cat is on the mat (6)
    # LCS = the cat on the mat = 5 -> P = R = 5/6 -> F1 = 5/6
    assert rouge_l_f1("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    # pred: a b (2), ref: a x b y z (5): LCS 2 -> P = 1, R = 2/5 -> F1 = 2*0.4/1.4 = 4/7
    assert rouge_l_f1("a b", "a x b y z") == pytest.approx(4 / 7)
    # best over references
    assert rouge_l_f1("a b", ["q", "a b"]) == pytest.approx(1.0)
    assert rouge_l_f1("", "a b") == 0.0
    assert rouge_l_f1("x y", "a b") == 0.0


def test_rouge_tokens_lowercase_alnum() -> None:
    assert rouge_tokens("HbA1c: 6.5%, fasting") == ["hba1c", "6", "5", "fasting"]
