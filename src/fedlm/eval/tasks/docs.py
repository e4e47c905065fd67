"""Document functions that the task templates name with ``!function docs.<name>``.

lm-eval imports this file by its path (next to the YAML), so it stays free of fedlm and
torch imports. The MMLU-Redux rules mirror :func:`fedlm.eval.loaders.load_mmlu_redux`
(a test checks that both keep the same rows): ``error_type`` is compared case-insensitively
with ``_`` read as a space, since the shipped files write both ``ok`` and ``OK``.
"""

from __future__ import annotations

import ast

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def error_key(value: object) -> str:
    """``"Wrong_Groundtruth"`` and ``"wrong groundtruth"`` compare equal; a missing cell is ``""``."""
    return " ".join(str(value or "").replace("_", " ").lower().split())


def mmlu_doc(row: dict) -> dict | None:
    """One MMLU-Redux CSV row as ``{question, choices, answer}``; None unless marked ok.

    ``choices`` is a Python/JSON list literal in the file (parsed with ``literal_eval``,
    never evaluated as code); ``answer`` is a 0-based index or a letter. Malformed rows
    raise ``ValueError``: fedlm's loader has validated the files before lm-eval reads them,
    so a failure here means the two disagree.
    """
    if error_key(row.get("error_type")) != "ok":
        return None
    choices = ast.literal_eval(str(row["choices"]).strip())
    if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
        raise ValueError(f"choices must be a list of strings, got {row['choices']!r}")
    answer = str(row["answer"]).strip()
    index = int(answer) if answer.isdigit() else LETTERS.index(answer.upper())
    return {"question": str(row["question"]), "choices": list(choices), "answer": index}


def process_mmlu(dataset):
    """The rows marked ok, parsed (lm-eval's ``process_docs`` hook)."""
    import datasets  # lm-eval has imported it already; kept local so this file imports fast

    docs = [doc for row in dataset if (doc := mmlu_doc(row)) is not None]
    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_list(docs, features=features)


def pubmedqa_text(doc: dict) -> str:
    """lm-eval's own PubMedQA prompt (``tasks/pubmedqa/preprocess_pubmedqa.py``): the
    abstract's paragraphs one per line, then the question."""
    contexts = "\n".join(doc["CONTEXTS"])
    return f"Abstract: {contexts}\nQuestion: {doc['QUESTION']}\nAnswer:"
