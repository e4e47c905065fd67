"""Fixtures of the lm-eval tests: benchmark files in the shipped formats and an offline,
per-session ``datasets`` cache (helpers in eval_support.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # eval_support, in importlib mode

from eval_support import mmlu_csv, pubmed_record


@pytest.fixture
def offline_datasets(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and a ``datasets`` cache of this session's own (builders write arrow files)."""
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-datasets")


@pytest.fixture
def mmlu_folder(tmp_path: Path) -> Path:
    """Two subjects, ',' and ';' separated (the second with a BOM), five rows of which three
    are marked ok (as "ok" and "OK")."""
    folder = tmp_path / "mmlu"
    folder.mkdir()
    (folder / "mmlu_anatomy.csv").write_text(mmlu_csv([
        ("Which bone, of the arm?", ["Femur", "Humerus", "Tibia", "Fibula"], "1", "ok"),
        ("Bad one?", ["a", "b", "c", "d"], "0", "bad_question_clarity"),
        ('A multi-line\n"quoted" question?', ["x", "y", "z", "w"], "3", "OK"),
    ]), encoding="utf-8")
    (folder / "mmlu_nutrition.csv").write_text("\ufeff" + mmlu_csv([
        ("Which vitamin; roughly?", ["A", "B12", "C", "D"], "B", "OK"),
        ("Wrong?", ["p", "q", "r", "s"], "0", "Wrong Groundtruth"),
    ], sep=";"), encoding="utf-8")
    return folder


@pytest.fixture
def pubmed_folder(tmp_path: Path) -> Path:
    """Four labelled items; the test split is ids 3 and 1, in that order."""
    folder = tmp_path / "pubmedqa"
    folder.mkdir()
    raw = {pid: pubmed_record(pid, label) for pid, label in
           [("1", "no"), ("2", "no"), ("3", "maybe"), ("4", "yes")]}
    (folder / "ori_pqal.json").write_text(json.dumps(raw))
    (folder / "test_ground_truth.json").write_text(json.dumps({"3": "maybe", "1": "no"}))
    return folder
