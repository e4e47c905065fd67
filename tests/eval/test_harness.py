"""The hand-written QA generation scorer, and the helpers every benchmark score shares.

Option scoring (MMLU, PubMedQA) runs through lm-eval and is tested in test_likelihood.py.
"""

from __future__ import annotations

import math

import pytest

from fedlm.errors import DataError
from fedlm.eval import harness
from fedlm.eval.harness import (
    MCItem,
    QAItem,
    generate_answers,
    macro_f1,
    qa_generation_scores,
    subsample,
)
from fedlm.models import load_base_model
from fedlm.models.tokenizers import byte_tokenizer

TOK = byte_tokenizer()


def test_macro_f1_by_hand() -> None:
    gold = ["yes", "yes", "no", "maybe"]
    pred = ["yes", "no", "no", "yes"]
    # yes: tp1 fp1 fn1 -> 0.5; no: tp1 fp1 fn0 -> 2/3; maybe: tp0 fp0 fn1 -> 0
    assert macro_f1(gold, pred, labels=("yes", "no", "maybe")) == pytest.approx(
        (0.5 + 2 / 3 + 0) / 3
    )
    assert math.isnan(macro_f1([], [], labels=("yes",)))


def test_item_validation() -> None:
    with pytest.raises(DataError, match="answer 4"):
        MCItem("q", ("a", "b", "c", "d"), 4)
    with pytest.raises(DataError, match="choices"):
        MCItem("q", ("a",), 0)


def test_subsample_is_evenly_spaced() -> None:
    assert subsample(list(range(10)), 4) == [0, 2, 5, 7]
    assert subsample(list(range(3)), None) == [0, 1, 2]
    assert subsample(list(range(3)), 5) == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_base_model("tiny-llama", seed=3)
    return model.eval(), tok


def test_generate_answers_batched_equals_one_at_a_time(tiny) -> None:
    model, tok = tiny
    prompts = ["What is insulin?", "Name a bone of the arm, please."]
    batched = generate_answers(model, tok, prompts, max_new_tokens=4, batch_size=2)
    single = [generate_answers(model, tok, [p], max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)


def test_qa_generation_scores_averages_em_and_rouge(monkeypatch) -> None:
    answers = iter([["The insulin.", "cat sat on mat"]])
    monkeypatch.setattr(harness, "generate_answers", lambda *a, **k: next(answers))
    items = [QAItem("q1", ("insulin",)), QAItem("q2", ("the cat is on the mat",))]
    out = qa_generation_scores(None, TOK, items)  # type: ignore[arg-type]
    # EM (articles and punctuation dropped): 1 and 0.
    # ROUGE-L keeps articles: [the insulin] vs [insulin]: LCS 1, P 1/2, R 1 -> F1 2/3;
    # [cat sat on mat] vs [the cat is on the mat]: LCS 3 (cat on mat), P 3/4, R 1/2 -> F1 0.6.
    assert out == {"exact_match": 0.5, "rouge_l_f1": pytest.approx((2 / 3 + 0.6) / 2), "count": 2}
