"""Option scoring against a stub LM whose logits are set by hand, plus tiny-llama checks.

The stub's logits at position t depend only on the token at t (a V x V table), so every
expected log-likelihood below is a sum of log-softmax entries written out with ``math``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from fedlm.errors import DataError
from fedlm.eval import harness
from fedlm.eval.harness import (
    LabelItem,
    MCItem,
    QAItem,
    generate_answers,
    label_accuracy,
    macro_f1,
    mc_prompt,
    multiple_choice_accuracy,
    qa_generation_scores,
    score_choices,
    subsample,
)
from fedlm.models import load_base_model
from fedlm.models.tokenizers import byte_tokenizer

TOK = byte_tokenizer()
V = len(TOK)  # 260: 256 bytes + 4 specials


def tid(ch: str) -> int:
    (i,) = TOK(ch, add_special_tokens=False)["input_ids"]
    return i


class TableLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next-token distribution given one token."""

    def __init__(self, boosts: dict[tuple[str, str], float]) -> None:
        super().__init__()
        self.table = torch.zeros(V, V)
        for (prev, nxt), logit in boosts.items():
            self.table[tid(prev), tid(nxt)] = logit

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def logp(boost: float, row: dict[str, float] | None = None) -> float:
    """log-softmax of one entry of a table row: zeros everywhere except ``row``'s boosts."""
    row = row or {}
    z = (V - len(row)) + sum(math.exp(v) for v in row.values())
    return boost - math.log(z)


def test_score_choices_exact_loglikelihoods() -> None:
    model = TableLM({(":", " "): 2.0, (" ", "A"): 3.0, (" ", "B"): 1.0})
    scores = score_choices(model, TOK, "Q:", [" A", " B", " C"], chat=False)
    space = logp(2.0, {" ": 2.0})  # log p(" " | ":")
    row = {"A": 3.0, "B": 1.0}
    expected = [space + logp(3.0, row), space + logp(1.0, row), space + logp(0.0, row)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(range(3), key=scores.__getitem__) == 0


def test_length_normalisation_by_hand() -> None:
    model = TableLM({})  # uniform: every token costs log V nats
    lv = math.log(V)
    sums = score_choices(model, TOK, "x", [" no", " maybe"])
    assert sums == pytest.approx([-3 * lv, -6 * lv], abs=1e-5)
    per_token = score_choices(model, TOK, "x", [" no", " maybe"], normalize="token")
    per_char = score_choices(model, TOK, "x", [" no", " maybe"], normalize="char")
    # Byte tokenizer: one token per character, so both normalisations give -log V.
    assert per_token == pytest.approx([-lv, -lv], abs=1e-5)
    assert per_char == pytest.approx([-lv, -lv], abs=1e-5)
    with pytest.raises(DataError, match="normalize"):
        score_choices(model, TOK, "x", [" no"], normalize="bytes")  # type: ignore[arg-type]


def test_chat_mode_scores_the_bare_option_after_the_assistant_turn() -> None:
    model = TableLM({("\n", "A"): 3.0})
    (score,) = score_choices(model, TOK, "Q?", [" A"], chat=True)
    # The chat context ends "<|im_start|>assistant\n"; the option is "A" (space stripped).
    assert score == pytest.approx(logp(3.0, {"A": 3.0}), abs=1e-5)


def test_mc_prompt_format() -> None:
    item = MCItem("Which organ? ", ("heart", " liver"), 1)
    assert mc_prompt(item) == "Question: Which organ?\nA. heart\nB. liver\nAnswer:"


def test_multiple_choice_accuracy_with_a_model_that_always_says_c() -> None:
    model = TableLM({(" ", "C"): 6.0})
    choices = ("w", "x", "y", "z")
    items = [
        MCItem(f"q{i}", choices, a, subject=s)
        for i, (a, s) in enumerate(
            [(2, "anat"), (0, "anat"), (2, "viro"), (1, "viro"), (3, "viro")]
        )
    ]
    out = multiple_choice_accuracy(model, TOK, items, batch_size=3)
    assert out["count"] == 5
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["acc_norm"] == pytest.approx(2 / 5)  # single letters: same as accuracy
    # softmax over the 4 letters: C gets e^6 / (e^6 + 3), each other 1 / (e^6 + 3); gold C twice
    e6 = math.exp(6.0)
    assert out["gold_prob"] == pytest.approx((2 * e6 + 3) / (5 * (e6 + 3)))
    assert out["subjects"] == {
        "anat": {"accuracy": 0.5, "count": 2},
        "viro": {"accuracy": pytest.approx(1 / 3), "count": 3},
    }
    assert multiple_choice_accuracy(model, TOK, items, max_items=2)["count"] == 2


def test_label_accuracy_sum_and_norm_disagree_as_computed_by_hand() -> None:
    # Boost the chain m->a->y->b->e: " maybe" is cheap per character but long.
    model = TableLM({("m", "a"): 4.0, ("a", "y"): 4.0, ("y", "b"): 4.0, ("b", "e"): 4.0})
    lv, boosted = math.log(V), logp(4.0, {"b": 4.0})
    ll_yes = -lv - lv + logp(0.0, {"b": 4.0}) - lv  # ":"->" ", " "->y, y->e (row y boosted), e->s
    ll_no = -3 * lv
    ll_maybe = -lv - lv + 4 * boosted  # ":"->" ", " "->m, then four boosted steps
    assert ll_no > ll_maybe > ll_yes  # sum picks "no"
    assert ll_maybe / 6 > ll_no / 3 and ll_maybe / 6 > ll_yes / 4  # per char picks "maybe"
    items = [LabelItem("a", "no"), LabelItem("b", "no"), LabelItem("c", "maybe")]
    out = label_accuracy(model, TOK, items, batch_size=4)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["acc_norm"] == pytest.approx(1 / 3)
    assert out["predicted"] == {"yes": 0, "no": 3, "maybe": 0}
    z = math.exp(ll_yes) + math.exp(ll_no) + math.exp(ll_maybe)
    assert out["gold_prob"] == pytest.approx((2 * math.exp(ll_no) + math.exp(ll_maybe)) / (3 * z))
    # F1: yes absent (left out), no 2*2/(4+1) = 0.8, maybe 0 -> 0.4
    assert out["macro_f1"] == pytest.approx(0.4)
    with pytest.raises(DataError, match="outside the label set"):
        label_accuracy(model, TOK, [LabelItem("a", "perhaps")])


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


def test_padding_and_batching_do_not_change_scores(tiny) -> None:
    model, tok = tiny
    pairs = [
        (harness._encode_pair(tok, p, c))
        for p, c in [
            ("short", " A"),
            ("a much longer prompt here", " maybe"),
            ("mid prompt", " no"),
        ]
    ]
    pad = tok.pad_token_id
    one = harness._loglikelihoods(model, pairs, pad_id=pad, batch_size=1, max_length=512)
    many = harness._loglikelihoods(model, pairs, pad_id=pad, batch_size=3, max_length=512)
    assert many == pytest.approx(one, abs=1e-4)


def test_long_prompts_lose_tokens_from_the_left(tiny) -> None:
    model, tok = tiny
    prompt = "abcdefghij" * 5  # 50 byte tokens
    cut = score_choices(model, tok, prompt, [" A", " no"], max_length=20)
    # Each sequence keeps its last 20 tokens: 18 context chars for " A", 17 for " no".
    kept = [
        score_choices(model, tok, prompt[-18:], [" A"])[0],
        score_choices(model, tok, prompt[-17:], [" no"])[0],
    ]
    assert cut == pytest.approx(kept, abs=1e-4)
    with pytest.raises(DataError, match="does not fit"):
        score_choices(model, tok, prompt, [" A"], max_length=2)


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
