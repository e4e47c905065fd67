"""Benchmark loaders on small fixture files, the registry, run_benchmark(s), and the real
shared files (scoring through lm-eval itself: test_likelihood.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tests_support import SHARED

from fedlm.config.eval_harness import BENCHMARK_NAMES, EvalHarnessConfig
from fedlm.errors import ConfigError, DataError
from fedlm.eval.benchmarks import (
    EVAL_BENCHMARKS,
    load_mmlu_redux,
    load_pubmedqa,
    load_qa_jsonl,
    run_benchmark,
    run_benchmarks,
)
from fedlm.eval.harness import MCItem
from fedlm.models import load_base_model

HEADER = [
    "question",
    "choices",
    "answer",
    "error_type",
    "source",
    "correct_answer",
    "potential_reason",
]

COMMA_CSV = (
    ",".join(HEADER) + "\n"
    "\"Which bone, of the arm?\",\"['Femur', 'Humerus', 'Tibia', 'Fibula']\",1,ok,src,,\n"
    "Bad one?,\"['a', 'b', 'c', 'd']\",0,bad_question_clarity,src,,why\n"
    '"A multi-line\nquestion?","[""x"",""y"",""z"",""w""]",3,OK,src,,\n'
)
SEMI_CSV = (
    ";".join(HEADER) + "\r\n"
    "\"Which vitamin; roughly?\";['A', 'B12', 'C', 'D'];B;OK;src;;\r\n"
    "Wrong?;['p', 'q', 'r', 's'];0;Wrong Groundtruth;src;2;\r\n"
)


@pytest.fixture
def mmlu_dir(tmp_path: Path) -> Path:
    (tmp_path / "mmlu_anatomy.csv").write_text(COMMA_CSV, encoding="utf-8")
    (tmp_path / "mmlu_nutrition.csv").write_text("\ufeff" + SEMI_CSV, encoding="utf-8")  # with BOM
    return tmp_path


def test_mmlu_both_separators_and_error_type_filter(mmlu_dir: Path) -> None:
    items = load_mmlu_redux(mmlu_dir)
    assert items == [
        MCItem("Which bone, of the arm?", ("Femur", "Humerus", "Tibia", "Fibula"), 1, "anatomy"),
        MCItem("A multi-line\nquestion?", ("x", "y", "z", "w"), 3, "anatomy"),
        MCItem("Which vitamin; roughly?", ("A", "B12", "C", "D"), 1, "nutrition"),  # letter B -> 1
    ]
    assert len(load_mmlu_redux(mmlu_dir, error_types=None)) == 5
    wrong = load_mmlu_redux(mmlu_dir, error_types=["wrong_groundtruth"])
    assert [i.question for i in wrong] == ["Wrong?"]
    assert [i.subject for i in load_mmlu_redux(mmlu_dir, subjects=["nutrition"])] == ["nutrition"]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ('q,"not a list",0,ok,s,,', r"mmlu_bad.csv:2: choices"),
        ("q,\"['a', 'b']\",7,ok,s,,", r"mmlu_bad.csv:2: answer '7' is outside"),
        ("q,\"['a', 'b']\",x1,ok,s,,", r"mmlu_bad.csv:2: answer 'x1'"),
        ("q,\"['a', 'b']\"", r"mmlu_bad.csv:2: expected 7 fields"),
        ('q,"[1, 2]",0,ok,s,,', r"mmlu_bad.csv:2: choices must be a list of strings"),
    ],
)
def test_mmlu_bad_rows_name_file_and_line(tmp_path: Path, row: str, match: str) -> None:
    (tmp_path / "mmlu_bad.csv").write_text(",".join(HEADER) + "\n" + row + "\n")
    with pytest.raises(DataError, match=match):
        load_mmlu_redux(tmp_path)


def test_mmlu_missing_things(tmp_path: Path, mmlu_dir: Path) -> None:
    with pytest.raises(DataError, match=r"set eval_harness.mmlu_path"):
        load_mmlu_redux(tmp_path / "absent")
    with pytest.raises(DataError, match=r"no mmlu_<subject>\.csv"):
        load_mmlu_redux(tmp_path / "..")  # exists, holds no csv at its top level
    with pytest.raises(DataError, match=r"mmlu_virology\.csv"):
        load_mmlu_redux(mmlu_dir, subjects=["virology"])
    (mmlu_dir / "mmlu_odd.csv").write_text("a|b|c\n1|2|3\n")
    with pytest.raises(DataError, match=r"mmlu_odd.csv:1: header"):
        load_mmlu_redux(mmlu_dir, subjects=["odd"])


def _pubmed(pid: str, label: str) -> dict:
    return {
        "QUESTION": f"Does {pid} work?",
        "CONTEXTS": ["First part.", " Second part."],
        "final_decision": label,
        "LONG_ANSWER": "...",
    }


@pytest.fixture
def pubmed_dir(tmp_path: Path) -> Path:
    raw = {
        "1": _pubmed("1", "yes"),
        "2": _pubmed("2", "no"),
        "3": _pubmed("3", "maybe"),
        "4": _pubmed("4", "yes"),
    }
    (tmp_path / "ori_pqal.json").write_text(json.dumps(raw))
    (tmp_path / "test_ground_truth.json").write_text(json.dumps({"3": "maybe", "1": "yes"}))
    return tmp_path


def test_pubmedqa_splits_and_prompt(pubmed_dir: Path) -> None:
    test = load_pubmedqa(pubmed_dir)
    assert [(i.id, i.label) for i in test] == [("3", "maybe"), ("1", "yes")]
    assert test[0].prompt == "Abstract: First part. Second part.\nQuestion: Does 3 work?"
    assert [i.id for i in load_pubmedqa(pubmed_dir, split="train")] == ["2", "4"]
    assert len(load_pubmedqa(pubmed_dir, split="all")) == 4
    with pytest.raises(DataError, match="split 'dev'"):
        load_pubmedqa(pubmed_dir, split="dev")


def test_pubmedqa_bad_files(pubmed_dir: Path) -> None:
    (pubmed_dir / "test_ground_truth.json").write_text(json.dumps({"1": "no"}))
    with pytest.raises(DataError, match="'1' is labelled 'no'"):
        load_pubmedqa(pubmed_dir)
    (pubmed_dir / "test_ground_truth.json").write_text(json.dumps({"9": "no"}))
    with pytest.raises(DataError, match=r"test id .9. is not in ori_pqal\.json"):
        load_pubmedqa(pubmed_dir)
    (pubmed_dir / "ori_pqal.json").write_text('{\n"1": {\n}, oops\n}')
    with pytest.raises(DataError, match=r"ori_pqal.json:3: not valid JSON"):
        load_pubmedqa(pubmed_dir)
    (pubmed_dir / "ori_pqal.json").write_text(
        json.dumps({"9": {**_pubmed("9", "no"), "final_decision": "n"}})
    )
    with pytest.raises(DataError, match=r"item '9': final_decision 'n'"):
        load_pubmedqa(pubmed_dir)


def test_qa_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "What?", "a": "This."}\n\n{"q": "Who?", "a": ["Me", "You"], "id": 7}\n')
    items = load_qa_jsonl(path, question_field="q", answer_field="a", id_field="id")
    assert [(i.question, i.answers, i.id) for i in items] == [
        ("What?", ("This.",), ""),
        ("Who?", ("Me", "You"), "7"),
    ]
    path.write_text('{"q": "What?", "a": "x"}\n{"q": "Who?"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:2: field 'a'"):
        load_qa_jsonl(path, question_field="q", answer_field="a")
    path.write_text("[1]\n")
    with pytest.raises(DataError, match=r"qa.jsonl:1: expected a JSON object"):
        load_qa_jsonl(path)


def test_registry_matches_config_names() -> None:
    assert EVAL_BENCHMARKS.names() == sorted(BENCHMARK_NAMES)
    with pytest.raises(ConfigError, match="unknown eval benchmark 'mmlu'"):
        run_benchmark("mmlu", None, None)


def test_config_rejects_bad_values() -> None:
    assert EvalHarnessConfig().benchmarks == ["mmlu-medical", "pubmedqa"]
    with pytest.raises(ValueError, match="unknown name"):
        EvalHarnessConfig(benchmarks=["mmlu"])
    with pytest.raises(ValueError, match="twice"):
        EvalHarnessConfig(benchmarks=["pubmedqa", "pubmedqa"])
    with pytest.raises(ValueError, match="empty"):
        EvalHarnessConfig(benchmarks=[])
    with pytest.raises(ValueError, match="extra"):
        EvalHarnessConfig(mmlu=".")


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_base_model("tiny-llama")
    return model.eval(), tok


def test_run_benchmarks_on_fixtures(offline_datasets, tiny, mmlu_dir: Path, pubmed_dir: Path) -> None:
    model, tok = tiny
    cfg = EvalHarnessConfig(mmlu_path=str(mmlu_dir), pubmedqa_path=str(pubmed_dir), batch_size=4)
    out = run_benchmarks(cfg, model, tok)
    assert list(out) == ["mmlu-medical", "pubmedqa"]
    assert out["mmlu-medical"]["count"] == 3 and 0 <= out["mmlu-medical"]["accuracy"] <= 1
    assert out["pubmedqa"]["count"] == 2 and sum(out["pubmedqa"]["predicted"].values()) == 2


def test_qa_benchmark_generates_and_scores(tiny, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "What?", "a": "This."}\n{"q": "Who?", "a": ["Me", "You"]}\n')
    out = run_benchmark("qa", *tiny, path=path, max_items=1, load_options={"question_field": "q", "answer_field": "a"},
                        score_options={"max_new_tokens": 2})
    assert out["benchmark"] == "qa" and out["count"] == 1 and 0 <= out["rouge_l_f1"] <= 1


def test_run_benchmark_absent_default_folder(tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # ../shared/datasets does not exist from here
    with pytest.raises(DataError, match=r"set eval_harness\.pubmedqa_path"):
        run_benchmark("pubmedqa", *tiny)


# ------------------------------------------------------------- the real shared files

MMLU_REAL = SHARED / "mmlu-redux-medical"
PUBMEDQA_REAL = SHARED / "pubmedqa"
real_mmlu = pytest.mark.skipif(not MMLU_REAL.is_dir(), reason=f"{MMLU_REAL} is absent")
real_pubmedqa = pytest.mark.skipif(not PUBMEDQA_REAL.is_dir(), reason=f"{PUBMEDQA_REAL} is absent")


@real_mmlu
def test_real_mmlu_redux_counts() -> None:
    every = Counter(i.subject for i in load_mmlu_redux(MMLU_REAL, error_types=None))
    assert len(every) == 8 and set(every.values()) == {100}
    kept = Counter(i.subject for i in load_mmlu_redux(MMLU_REAL))
    # ok rows per subject in the shipped files (virology has many flagged rows)
    assert kept["medical_genetics"] == 100 and kept["virology"] == 43
    assert sum(kept.values()) == 722
    first = load_mmlu_redux(MMLU_REAL, subjects=["anatomy"])[0]  # a ';'-separated file
    assert first.question.startswith("Which of the following is a disorder characterized")
    assert first.choices[first.answer] == "Narcolepsy"


@real_pubmedqa
def test_real_pubmedqa_counts_and_balance() -> None:
    test = load_pubmedqa(PUBMEDQA_REAL)
    assert len(test) == 500 and len({i.id for i in test}) == 500
    labels = Counter(i.label for i in load_pubmedqa(PUBMEDQA_REAL, split="all"))
    assert labels == {"yes": 552, "no": 338, "maybe": 110}  # 55% / 34% / 11% of 1000
    assert len(load_pubmedqa(PUBMEDQA_REAL, split="train")) == 500


def test_qa_json_array_with_context(tmp_path: Path) -> None:
    path = tmp_path / "global_test.json"
    path.write_text(json.dumps([{"instruction": "Sum?", "context": "2 and 3", "response": "5"},
                                {"instruction": "Name?", "context": "", "response": "Ann"}]))
    items = load_qa_jsonl(path, question_field="instruction", answer_field="response", context_field="context")
    assert [(i.question, i.answers) for i in items] == [("Sum?\n\n2 and 3", ("5",)), ("Name?", ("Ann",))]
    with pytest.raises(ValueError, match="qa_path is unset"):
        EvalHarnessConfig(benchmarks=["qa"])
