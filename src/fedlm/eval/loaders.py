"""Loaders of the local benchmark files: MMLU-Redux medical, PubMedQA and QA JSON(L).

* MMLU-Redux (Gema et al. 2024, "Are We Done with MMLU?") re-annotates MMLU questions with
  an ``error_type``; only rows marked ``ok`` are kept, as its authors recommend. The shipped
  files write it ``ok`` or ``OK``; both count (a case-sensitive filter keeps 483 of the 722
  medical items and drops whole subjects).
* PubMedQA (Jin et al. 2019) PQA-L: 1,000 expert-labelled yes/no/maybe items, 500 of them
  the official test set.

Scoring goes through lm-eval over the same files (:mod:`fedlm.eval.lm_tasks`); these loaders
validate the files first, so every parse problem raises ``DataError`` naming the file and
the line (CSV, JSONL) or item id (JSON), and they give the item counts lm-eval must match.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections.abc import Collection, Sequence
from pathlib import Path

from fedlm.errors import DataError
from fedlm.eval.items import LETTERS, LabelItem, MCItem, QAItem

MMLU_COLUMNS = ("question", "choices", "answer", "error_type")
PUBMEDQA_SPLITS = ("test", "train", "all")


def load_mmlu_redux(
    folder: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    error_types: Collection[str] | None = ("ok",),
) -> list[MCItem]:
    """Multiple-choice items from MMLU-Redux CSVs named ``mmlu_<subject>.csv``.

    Each file is ``,``- or ``;``-separated (detected from its header) with columns
    ``question``, ``choices`` (a Python/JSON list literal of strings), ``answer`` (0-based
    index, or a letter A, B, ...) and ``error_type``.

    Args:
        folder: the folder holding the CSVs.
        subjects: subject names (``"anatomy"`` for ``mmlu_anatomy.csv``); None loads every
            ``mmlu_*.csv`` in the folder, sorted by name.
        error_types: keep rows whose ``error_type``, compared case-insensitively with ``_``
            read as a space, is in this set; rows with any other value (including empty)
            are dropped. None keeps every row.

    Raises:
        DataError: the folder or a subject file is missing, or a row is malformed.
    """
    folder = _existing_dir(folder, field="eval_harness.mmlu_path")
    if subjects is None:
        files = sorted(folder.glob("mmlu_*.csv"))
        if not files:
            raise DataError(
                f"{folder} holds no mmlu_<subject>.csv file; set eval_harness.mmlu_path"
            )
    else:
        files = [folder / f"mmlu_{s}.csv" for s in subjects]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{folder} lacks {missing}; check the subject names")
    keep = None if error_types is None else {_error_key(e) for e in error_types}
    items: list[MCItem] = []
    for path in files:
        items += _read_mmlu_csv(path, keep=keep)
    return items


def load_pubmedqa(folder: str | Path, *, split: str = "test") -> list[LabelItem]:
    """PubMedQA PQA-L items from ``ori_pqal.json`` and ``test_ground_truth.json``.

    The prompt joins the abstract's context paragraphs with spaces:
    ``"Abstract: <contexts>\\nQuestion: <question>"``; the label is ``final_decision``.

    Args:
        folder: the folder holding both JSON files.
        split: "test" (the 500 official test ids, in the ground-truth file's order),
            "train" (the other labelled items) or "all" (all 1,000, in file order).

    Raises:
        DataError: a file is missing or not valid JSON, an item lacks a field, or a test
            label disagrees with the item's ``final_decision``.
    """
    if split not in PUBMEDQA_SPLITS:
        raise DataError(
            f"PubMedQA split {split!r} is unknown; choose one of {list(PUBMEDQA_SPLITS)}"
        )
    folder = _existing_dir(folder, field="eval_harness.pubmedqa_path")
    items_path, truth_path = folder / "ori_pqal.json", folder / "test_ground_truth.json"
    raw, truth = _read_json_object(items_path), _read_json_object(truth_path)
    if split == "test":
        ids = list(truth)
    else:
        ids = [pid for pid in raw if split == "all" or pid not in truth]
    items = []
    for pid in ids:
        if pid not in raw:
            raise DataError(f"{truth_path}: test id {pid!r} is not in {items_path.name}")
        item = _pubmedqa_item(raw[pid], pid, items_path)
        if pid in truth and truth[pid] != item.label:
            raise DataError(
                f"{truth_path}: id {pid!r} is labelled {truth[pid]!r} but {items_path.name} says "
                f"{item.label!r}; the two files come from different releases"
            )
        items.append(item)
    return items


def load_qa_jsonl(
    path: str | Path,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    context_field: str | None = None,
) -> list[QAItem]:
    """Question/answer pairs from a JSONL file (one object per line, blank lines skipped) or
    a JSON file holding one array of objects (Dolly's ``global_test.json``).

    The answer field holds one string or a list of acceptable strings. A non-empty
    ``context_field`` is appended to the question after a blank line.

    Raises:
        DataError: the file is missing, or a row is not a JSON object with the fields.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"QA file {path} does not exist; check the path (eval_harness.qa_path)")
    items = []
    for where, row in _json_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field {question_field!r} is missing or not a non-empty string")
        context = row.get(context_field) if context_field else None
        if isinstance(context, str) and context.strip():
            question = f"{question.strip()}\n\n{context.strip()}"
        answers = row.get(answer_field)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: field {answer_field!r} must be a string or a list of strings")
        ident = str(row.get(id_field, "")) if id_field else ""
        items.append(QAItem(question=question, answers=tuple(answers), id=ident))
    return items


def _json_rows(path: Path):
    """``(where, row)`` for each object of a JSON array file or of a JSONL file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one array; a .jsonl line may be a list
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        yield from ((f"{path}: item {i}", row) for i, row in enumerate(rows))
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield f"{path}:{lineno}", row


# ---------------------------------------------------------------------------- parsing


def _existing_dir(folder: str | Path, *, field: str) -> Path:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"dataset folder {folder} (resolved to {folder.resolve()}) does not exist; set {field}"
        )
    return folder


def _error_key(value: str) -> str:
    # The same rule as the lm-eval tasks' fedlm.eval.tasks.docs.error_key.
    return " ".join(value.replace("_", " ").lower().split())


def detect_separator(path: str | Path) -> str:
    """The separator (``,`` or ``;``) under which the file's header holds the MMLU columns.

    The shipped MMLU-Redux files differ, so each file's own header decides; lm-eval's task
    for the file is written with the same separator.

    Raises:
        DataError: the file is unreadable, or no separator yields the columns.
    """
    return _separator(Path(path), _read_text(Path(path)))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _separator(path: Path, text: str) -> str:
    header = text.split("\n", 1)[0]
    for d in (",", ";"):
        if set(MMLU_COLUMNS) <= {c.strip() for c in next(csv.reader([header], delimiter=d))}:
            return d
    raise DataError(
        f"{path}:1: header {header.strip()[:120]!r} lacks columns {list(MMLU_COLUMNS)} "
        "with ',' or ';' as separator"
    )


def _read_mmlu_csv(path: Path, *, keep: set[str] | None) -> list[MCItem]:
    text = _read_text(path)
    delimiter = _separator(path, text)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    subject = path.stem.removeprefix("mmlu_")
    items: list[MCItem] = []
    try:
        for row in reader:
            # line_num is the row's last line: quoted fields may span lines.
            where = f"{path}:{reader.line_num}"
            items += _mmlu_row(row, where, delimiter=delimiter, subject=subject, keep=keep)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return items


def _mmlu_row(
    row: dict, where: str, *, delimiter: str, subject: str, keep: set[str] | None
) -> list[MCItem]:
    """The row as a one-item list, or [] when its error_type is filtered out."""
    if None in row or any(value is None for value in row.values()):
        raise DataError(
            f"{where}: expected {len(row) - (None in row)} fields separated by {delimiter!r}, "
            "got a different number (quote fields that contain the separator)"
        )
    if keep is not None and _error_key(row["error_type"]) not in keep:
        return []
    choices = _parse_choices(row["choices"], where)
    return [
        MCItem(
            question=row["question"].strip(),
            choices=choices,
            answer=_parse_answer(row["answer"], len(choices), where),
            subject=subject,
        )
    ]


def _parse_choices(cell: str, where: str) -> tuple[str, ...]:
    try:
        value = ast.literal_eval(cell.strip())  # a Python or JSON list literal, never code
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: choices {cell[:80]!r} is not a list literal") from None
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: choices must be a list of strings, got {cell[:80]!r}")
    if not 2 <= len(value) <= len(LETTERS):
        raise DataError(f"{where}: {len(value)} choices; need 2..{len(LETTERS)}")
    return tuple(value)


def _parse_answer(cell: str, n: int, where: str) -> int:
    cell = cell.strip()
    if cell.isdigit():
        index = int(cell)
    elif len(cell) == 1 and cell.upper() in LETTERS:
        index = LETTERS.index(cell.upper())
    else:
        raise DataError(f"{where}: answer {cell!r} is neither an index 0..{n - 1} nor a letter")
    if index >= n:
        raise DataError(f"{where}: answer {cell!r} is outside the {n} choices")
    return index


def pubmedqa_rows(folder: str | Path, ids: Sequence[str]) -> list[dict]:
    """The ``ori_pqal.json`` records of ``ids``, in that order, with their ``id`` added.

    Only the fields a prompt and a label need are kept (``QUESTION``, ``CONTEXTS``,
    ``final_decision``); call :func:`load_pubmedqa` first to validate them.
    """
    raw = _read_json_object(Path(folder).expanduser() / "ori_pqal.json")
    missing = [pid for pid in ids if pid not in raw]
    if missing:
        raise DataError(f"{folder}/ori_pqal.json lacks ids {missing[:5]}")
    fields = ("QUESTION", "CONTEXTS", "final_decision")
    return [{"id": pid, **{f: raw[pid][f] for f in fields}} for pid in ids]


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; set eval_harness.pubmedqa_path to PubMedQA's data folder"
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise DataError(
            f"{path}: expected a JSON object keyed by PubMed id, got {type(value).__name__}"
        )
    return value


def _pubmedqa_item(raw: object, pid: str, path: Path) -> LabelItem:
    where = f"{path}: item {pid!r}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    question, contexts, label = raw.get("QUESTION"), raw.get("CONTEXTS"), raw.get("final_decision")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: QUESTION is missing or empty")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise DataError(f"{where}: CONTEXTS must be a list of strings")
    if label not in ("yes", "no", "maybe"):
        raise DataError(f"{where}: final_decision {label!r} is not yes/no/maybe")
    context = " ".join(c.strip() for c in contexts)
    return LabelItem(
        prompt=f"Abstract: {context}\nQuestion: {question.strip()}", label=label, id=pid
    )


__all__ = [
    "MMLU_COLUMNS",
    "PUBMEDQA_SPLITS",
    "detect_separator",
    "load_mmlu_redux",
    "load_pubmedqa",
    "load_qa_jsonl",
    "pubmedqa_rows",
]
