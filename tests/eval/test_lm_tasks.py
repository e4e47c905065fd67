"""The lm-eval task folders: written over local files, loaded offline by lm-eval itself,
and keeping the same rows as fedlm's loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from eval_support import mmlu_csv
from tests_support import SHARED

from fedlm.errors import ConfigError, DataError
from fedlm.eval.benchmarks import dataset_folder, load_mmlu_redux
from fedlm.eval.lm_tasks import MMLU_GROUP, PUBMEDQA_TASK, write_tasks
from fedlm.eval.tasks import TEMPLATES
from fedlm.eval.tasks.docs import error_key, mmlu_doc


def _load(task_set, names):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_set.include_path), include_defaults=False)
    return manager.load(names)


def test_mmlu_tasks_load_offline_with_each_files_separator(offline_datasets, mmlu_folder, tmp_path):
    task_set = write_tasks("mmlu-medical", mmlu_folder, tmp_path / "tasks")
    assert task_set.name == MMLU_GROUP and task_set.labels == ("anatomy", "nutrition")
    assert task_set.counts == (2, 1) and task_set.total == 3
    written = yaml.safe_load((tmp_path / "tasks" / f"{MMLU_GROUP}_nutrition.yaml").read_text())
    assert written["dataset_kwargs"]["sep"] == ";"
    assert written["dataset_kwargs"]["data_files"]["test"] == str(mmlu_folder.resolve() / "mmlu_nutrition.csv")
    assert written["include"] == str(TEMPLATES / "mmlu_redux_medical.yaml")
    loaded = _load(task_set, [MMLU_GROUP])
    assert sorted(loaded["tasks"]) == list(task_set.tasks)
    anatomy = loaded["tasks"][f"{MMLU_GROUP}_anatomy"]
    docs = list(anatomy.eval_docs)
    assert [d["answer"] for d in docs] == [1, 3]
    assert anatomy.fewshot_context(docs[1], num_fewshot=0) == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        'A multi-line\n"quoted" question?\nA. x\nB. y\nC. z\nD. w\nAnswer:'
    )
    assert anatomy.doc_to_choice(docs[1]) == ["A", "B", "C", "D"]
    nutrition = list(loaded["tasks"][f"{MMLU_GROUP}_nutrition"].eval_docs)
    assert nutrition[0]["choices"] == ["A", "B12", "C", "D"] and nutrition[0]["answer"] == 1  # letter B


def test_pubmedqa_task_loads_offline_in_lm_evals_format(offline_datasets, pubmed_folder, tmp_path):
    task_set = write_tasks("pubmedqa", pubmed_folder, tmp_path / "tasks")
    assert task_set.name == PUBMEDQA_TASK and task_set.counts == (2,)
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "fedlm_pubmedqa_test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["3", "1"]  # the ground-truth file's order
    task = _load(task_set, [PUBMEDQA_TASK])["tasks"][PUBMEDQA_TASK]
    doc = next(iter(task.eval_docs))
    # lm-eval's pubmedqa prompt: the abstract's paragraphs one per line
    assert task.fewshot_context(doc, num_fewshot=0) == (
        "Abstract: First part.\nSecond part.\nQuestion: Does 3 work?\nAnswer:")
    assert task.doc_to_choice(doc) == ["yes", "no", "maybe"] and task.doc_to_target(doc) == "maybe"
    assert write_tasks("pubmedqa", pubmed_folder, tmp_path / "all", split="all").counts == (4,)


def test_bad_inputs_fail_before_lm_eval_runs(mmlu_folder, tmp_path):
    with pytest.raises(DataError, match="has no lm-eval tasks"):
        write_tasks("qa", mmlu_folder, tmp_path)
    with pytest.raises(DataError, match=r"set eval_harness\.mmlu_path"):
        write_tasks("mmlu-medical", tmp_path / "absent", tmp_path / "out")
    (mmlu_folder / "mmlu_bad.csv").write_text(mmlu_csv([("q", ["a", "b"], "7", "ok")]))
    with pytest.raises(DataError, match=r"mmlu_bad.csv:2: answer '7' is outside"):
        write_tasks("mmlu-medical", mmlu_folder, tmp_path / "out")
    assert write_tasks("mmlu-medical", mmlu_folder, tmp_path / "one", subjects=["anatomy"]).tasks == (
        f"{MMLU_GROUP}_anatomy",)


@pytest.mark.parametrize("value", ["ok", "OK", " Ok ", "o_k"])
def test_docs_keep_what_the_loader_keeps(value: str) -> None:
    row = {"question": "q", "choices": "['a', 'b']", "answer": "1", "error_type": value}
    kept = mmlu_doc(row) is not None
    assert kept == (error_key(value) == "ok") == (value != "o_k")


def test_dataset_folder_under_a_root(tmp_path) -> None:
    assert dataset_folder("mmlu-medical", tmp_path) == tmp_path / "mmlu-redux-medical"
    assert dataset_folder("pubmedqa", "~") == Path("~").expanduser() / "pubmedqa"
    with pytest.raises(DataError, match="reads a file you name"):
        dataset_folder("qa", tmp_path)
    with pytest.raises(ConfigError, match="unknown eval benchmark"):
        dataset_folder("mmlu", tmp_path)


MMLU_REAL = SHARED / "mmlu-redux-medical"


@pytest.mark.skipif(not MMLU_REAL.is_dir(), reason=f"{MMLU_REAL} is absent (the shared datasets)")
def test_real_mmlu_tasks_read_the_loaders_722_items(offline_datasets, tmp_path) -> None:
    task_set = write_tasks("mmlu-medical", MMLU_REAL, tmp_path)
    assert task_set.total == len(load_mmlu_redux(MMLU_REAL)) == 722
    loaded = _load(task_set, [MMLU_GROUP])["tasks"]
    for name, count in zip(task_set.tasks, task_set.counts, strict=True):
        assert len(loaded[name].eval_docs) == count, name
