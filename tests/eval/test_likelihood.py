"""Scoring through lm-eval: hand-worked log-likelihoods, a direct computation on a tiny
model, batching and logit trimming that change nothing, PEFT-wrapped models, quiet output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from eval_support import bigram_llama, mmlu_csv
from tests_support import SHARED

from fedlm.errors import DataError
from fedlm.eval.benchmarks import score_benchmark
from fedlm.eval.likelihood import logits_needed, score_tasks
from fedlm.eval.lm_tasks import MMLU_GROUP, write_tasks
from fedlm.models import load_base_model

V = 260  # the byte tokenizer: 256 bytes + 4 specials
LV = math.log(V)


def entry(boost: float, row: dict[str, float] | None = None) -> float:
    """log-softmax of one entry of a table row that is 0 except for ``row``'s boosts."""
    row = row or {}
    return boost - math.log((V - len(row)) + sum(math.exp(v) for v in row.values()))


@pytest.fixture
def five_items(tmp_path: Path) -> Path:
    """Answers C, A | C, B, D over two subjects (anatomy, virology)."""
    choices = ["w", "x", "y", "z"]
    folder = tmp_path / "five"
    folder.mkdir()
    (folder / "mmlu_anatomy.csv").write_text(
        mmlu_csv([(f"q{i}", choices, a, "ok") for i, a in enumerate("20")]))
    (folder / "mmlu_virology.csv").write_text(
        mmlu_csv([(f"q{i}", choices, a, "ok") for i, a in enumerate("213")], sep=";"))
    return folder


def test_a_model_that_always_says_c_scores_as_computed_by_hand(offline_datasets, five_items):
    model, tok = bigram_llama({(" ", "C"): 6.0})
    out = score_benchmark("mmlu-medical", model, tok, five_items, batch_size=3)
    # Each option " X" is two byte tokens: ":" -> " " (uniform row), then " " -> X.
    row = {"C": 6.0}
    other, c = -LV + entry(0.0, row), -LV + entry(6.0, row)
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["acc_norm"] == pytest.approx(2 / 5)  # one letter each: the same argmax
    e6 = math.exp(6.0)
    assert out["gold_prob"] == pytest.approx((2 * e6 + 3) / (5 * (e6 + 3)))
    assert out["subjects"] == {"anatomy": {"accuracy": 0.5, "count": 2},
                               "virology": {"accuracy": pytest.approx(1 / 3), "count": 3}}
    with _tasks("mmlu-medical", five_items) as task_set:
        scores = score_tasks(model, tok, task_set, batch_size=2, progress=False)
    assert [s.pred for s in scores] == [2] * 5
    assert [s.gold for s in scores] == [2, 0, 2, 1, 3]
    for s in scores:
        assert s.loglikelihoods == pytest.approx((other, other, c, other), abs=1e-5)


def test_labels_sum_and_per_character_disagree_as_computed_by_hand(offline_datasets, pubmed_folder):
    # Boost the chain m->a->y->b->e: " maybe" is cheap per character but long.
    model, tok = bigram_llama({("m", "a"): 4.0, ("a", "y"): 4.0, ("y", "b"): 4.0, ("b", "e"): 4.0})
    step = entry(4.0, {"b": 4.0})  # every boosted row has one 4.0
    ll = {"yes": -3 * LV + entry(0.0, {"b": 4.0}),  # ":"->" ", " "->y, y->e (row y boosted), e->s
          "no": -3 * LV,
          "maybe": -2 * LV + 4 * step}
    assert ll["no"] > ll["maybe"] > ll["yes"]  # the sum picks "no"
    per_char = {"yes": ll["yes"] / 3, "no": ll["no"] / 2, "maybe": ll["maybe"] / 5}
    assert max(per_char, key=per_char.get) == "maybe"  # lm-eval's acc_norm picks "maybe"
    out = score_benchmark("pubmedqa", model, tok, pubmed_folder, load_options={"split": "all"})
    # gold: no, no, maybe, yes
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["acc_norm"] == pytest.approx(1 / 4)
    assert out["predicted"] == {"yes": 0, "no": 4, "maybe": 0}
    # F1: no 2*2/(4+2) = 2/3; maybe and yes 0 -> (2/3) / 3
    assert out["macro_f1"] == pytest.approx(2 / 9)
    z = sum(math.exp(v) for v in ll.values())
    gold = ["no", "no", "maybe", "yes"]
    assert out["gold_prob"] == pytest.approx(sum(math.exp(ll[g]) for g in gold) / (4 * z))


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_base_model("tiny-llama", seed=3)
    return model.eval(), tok


def direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), one unpadded sequence, one forward pass."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # (T, V)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def test_lm_eval_choices_match_a_direct_computation(offline_datasets, tiny, mmlu_folder):
    model, tok = tiny
    with _tasks("mmlu-medical", mmlu_folder) as task_set:
        scores = score_tasks(model, tok, task_set, batch_size=3, progress=False)
    prompts = [
        ("anatomy", "Which bone, of the arm?", ["Femur", "Humerus", "Tibia", "Fibula"]),
        ("anatomy", 'A multi-line\n"quoted" question?', ["x", "y", "z", "w"]),
        ("nutrition", "Which vitamin; roughly?", ["A", "B12", "C", "D"]),
    ]
    assert [s.gold for s in scores] == [1, 3, 1]
    for score, (subject, question, choices) in zip(scores, prompts, strict=True):
        context = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
                   f"{question}\n" + "".join(f"{'ABCD'[i]}. {c}\n" for i, c in enumerate(choices))
                   + "Answer:")
        direct = [direct_loglikelihood(model, tok, context, f" {letter}") for letter in "ABCD"]
        assert score.loglikelihoods == pytest.approx(direct, abs=1e-4)
        assert score.pred == max(range(4), key=direct.__getitem__)


def test_batching_and_trimmed_logits_change_nothing(offline_datasets, tiny, mmlu_folder, pubmed_folder):
    model, tok = tiny
    for name, folder in [("mmlu-medical", mmlu_folder), ("pubmedqa", pubmed_folder)]:
        with _tasks(name, folder, split="all") if name == "pubmedqa" else _tasks(name, folder) as ts:
            runs = [score_tasks(model, tok, ts, batch_size=b, trim_logits=trim, progress=False)
                    for b, trim in [(1, False), (1, True), (4, False), (4, True)]]
        first = runs[0]
        for other in runs[1:]:
            assert [s.pred for s in other] == [s.pred for s in first]
            for a, b in zip(other, first, strict=True):
                assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)


def test_max_items_is_evenly_spaced_over_subjects(offline_datasets, tiny, five_items):
    out = score_benchmark("mmlu-medical", *tiny, five_items, max_items=2, progress=False)
    # items 0..4 = anatomy 0, 1, virology 0, 1, 2; evenly spaced 2 -> 0 and 2
    assert out["count"] == 2
    assert {s: v["count"] for s, v in out["subjects"].items()} == {"anatomy": 1, "virology": 1}


def test_a_peft_wrapped_model_is_scored_as_its_base_until_trained(offline_datasets, tiny, mmlu_folder):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    base = score_benchmark("mmlu-medical", model, tok, mmlu_folder, progress=False)
    wrapped = get_peft_model(load_base_model("tiny-llama", seed=3)[0],
                             LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # B = 0: no change
    wrapped.train()
    out = score_benchmark("mmlu-medical", wrapped, tok, mmlu_folder, progress=False)
    assert out["accuracy"] == base["accuracy"]
    assert out["gold_prob"] == pytest.approx(base["gold_prob"], abs=1e-6)
    assert wrapped.training  # scoring leaves the training mode as it found it


def test_output_is_one_bar_on_stderr_and_no_warning_stream(offline_datasets, tiny, mmlu_folder, capsys):
    score_benchmark("mmlu-medical", *tiny, mmlu_folder, batch_size=2)
    out, err = capsys.readouterr()
    assert out == ""  # `fedlm eval` prints its JSON on stdout
    assert "mmlu-medical: scoring options" in err and "12/12" in err
    assert "WARNING" not in err and "Passed an already-initialized model" not in err


def test_the_bar_nests_in_a_callers_live_display(offline_datasets, tiny, mmlu_folder) -> None:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with console.status("scoring mmlu-medical"):  # as `fedlm eval --benchmark` does
        out = score_benchmark("mmlu-medical", *tiny, mmlu_folder, console=console)
    assert out["count"] == 3 and "scoring options" in console.file.getvalue()


def test_logits_needed_by_hand() -> None:
    # lengths 5, 3 (then padding 0s), 4 with a real trailing 0 read as padding
    inps = torch.tensor([[7, 7, 7, 7, 7], [7, 7, 7, 0, 0], [7, 7, 7, 0, 0]])
    assert logits_needed(inps, 1) == 5 - (3 - 1)  # the shortest row starts reading at 2
    assert logits_needed(inps, 3) == 5
    assert logits_needed(torch.zeros(2, 4, dtype=torch.long), 1) == 4


def test_counts_must_agree_with_the_loader(offline_datasets, tiny, mmlu_folder, monkeypatch) -> None:
    from fedlm.eval import lm_tasks

    with _tasks("mmlu-medical", mmlu_folder) as task_set:
        wrong = lm_tasks.TaskSet(task_set.benchmark, task_set.include_path, MMLU_GROUP,
                                 task_set.tasks, (5, 1), task_set.labels)
        with pytest.raises(DataError, match="reads 2 items but fedlm's loader reads 5"):
            score_tasks(*tiny, wrong, progress=False)


def test_chat_needs_a_template(tiny, mmlu_folder, monkeypatch) -> None:
    model, tok = tiny
    monkeypatch.setattr(tok, "chat_template", None)
    with _tasks("mmlu-medical", mmlu_folder) as task_set, pytest.raises(DataError, match="chat template"):
        score_tasks(model, tok, task_set, chat=True, progress=False)


class _tasks:
    """``write_tasks`` into a temporary folder that lives as long as the ``with`` block."""

    def __init__(self, name: str, folder: Path, **options) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.task_set = write_tasks(name, folder, self.tmp.name, **options)

    def __enter__(self):
        return self.task_set

    def __exit__(self, *exc) -> None:
        self.tmp.cleanup()


MMLU_REAL = SHARED / "mmlu-redux-medical"


@pytest.mark.integration
@pytest.mark.skipif(not MMLU_REAL.is_dir(), reason=f"{MMLU_REAL} is absent (the shared datasets)")
def test_smollm2_through_lm_eval_matches_a_direct_computation(offline_datasets) -> None:
    model, tok = load_base_model("smollm2-135m")
    with _tasks("mmlu-medical", MMLU_REAL) as task_set:
        scores = score_tasks(model.eval(), tok, task_set, max_items=2, batch_size=4, progress=False)
        from lm_eval.tasks import TaskManager

        loaded = TaskManager(include_path=str(task_set.include_path), include_defaults=False).load(
            sorted({s.task for s in scores}))["tasks"]
        for s in scores:
            task = loaded[s.task]
            context = task.fewshot_context(task.eval_docs[s.index], num_fewshot=0)
            direct = [direct_loglikelihood(model, tok, context, f" {c}") for c in s.choices]
            assert s.loglikelihoods == pytest.approx(direct, abs=1e-3)
            assert s.pred == max(range(len(direct)), key=direct.__getitem__)
