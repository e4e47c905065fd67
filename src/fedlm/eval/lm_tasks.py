"""lm-eval task folders over a local copy of a benchmark: the one place data meets lm-eval.

:func:`write_tasks` takes the dataset folder (the commands layer passes ``--path``, a config
value or ``$FEDLM_DATA``) and writes an lm-eval ``include_path``: one YAML per task that
``include``s a template shipped in :mod:`fedlm.eval.tasks` and names the local files, which
``datasets``' csv and json builders then read offline. The same folder serves fedlm's own
scoring and ``lm_eval --include_path DIR --tasks NAME``, so both score one definition.

fedlm's loaders (:mod:`fedlm.eval.loaders`) read every file first: a malformed row fails
here with its file and line, not deep inside lm-eval, and their item counts are the ones
each task must reproduce (:func:`fedlm.eval.likelihood.score_tasks` checks it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedlm.errors import DataError
from fedlm.eval.loaders import detect_separator, load_mmlu_redux, load_pubmedqa, pubmedqa_rows
from fedlm.eval.tasks import TEMPLATES

MMLU_GROUP = "fedlm_mmlu_redux_medical"
PUBMEDQA_TASK = "fedlm_pubmedqa"


@dataclass(frozen=True)
class TaskSet:
    """The lm-eval tasks written for one benchmark.

    Attributes:
        benchmark: fedlm's name for it ("mmlu-medical", "pubmedqa").
        include_path: the folder to hand lm-eval (``--include_path``).
        name: what to ask lm-eval for (``--tasks``): a group, or the single task.
        tasks: leaf task names, in the order of fedlm's loader.
        counts: items per leaf task, as fedlm's loader counts them.
        labels: a short label per leaf task (the MMLU subject), for per-task metrics.
    """

    benchmark: str
    include_path: Path
    name: str
    tasks: tuple[str, ...]
    counts: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


def mmlu_tasks(
    folder: str | Path, out_dir: str | Path, *, subjects: Sequence[str] | None = None
) -> TaskSet:
    """One lm-eval task per ``mmlu_<subject>.csv`` in ``folder``, and a group over them.

    ``subjects`` limits the files (``["anatomy"]`` for ``mmlu_anatomy.csv``); None takes all.

    Each task reads its CSV with ``datasets``' csv builder and the separator its header uses
    (the shipped files differ: ``,`` or ``;``). Subjects with no row marked ok are left out.
    The group averages over items (``weight_by_size``), as fedlm's ``accuracy`` does.

    Raises:
        DataError: the folder is missing, holds no subject file, or a file is malformed.
    """
    folder, out = _absolute_dir(folder), _out_dir(out_dir)
    items = load_mmlu_redux(folder, subjects=subjects)  # validates every file, names file:line on errors
    subjects = sorted({item.subject for item in items})
    tasks, counts = [], []
    for subject in subjects:
        path = folder / f"mmlu_{subject}.csv"
        task = f"{MMLU_GROUP}_{subject}"
        _write_yaml(
            out / f"{task}.yaml",
            {
                "include": str(TEMPLATES / "mmlu_redux_medical.yaml"),
                "task": task,
                "task_alias": subject,
                "description": "The following are multiple choice questions (with answers) "
                f"about {subject.replace('_', ' ')}.\n\n",
                # keep_default_na: a cell reading "NA" or "None" stays text, as in fedlm's loader.
                "dataset_kwargs": {
                    "data_files": {"test": str(path)},
                    "sep": detect_separator(path),
                    "keep_default_na": False,
                },
            },
        )
        tasks.append(task)
        counts.append(sum(item.subject == subject for item in items))
    _write_yaml(
        out / f"{MMLU_GROUP}.yaml",
        {
            "group": MMLU_GROUP,
            "task": tasks,
            "aggregate_metric_list": [
                {"metric": "acc", "aggregation": "mean", "weight_by_size": True},
                {"metric": "acc_norm", "aggregation": "mean", "weight_by_size": True},
            ],
            "metadata": {"version": 1.0},
        },
    )
    return TaskSet("mmlu-medical", out, MMLU_GROUP, tuple(tasks), tuple(counts), tuple(subjects))


def pubmedqa_tasks(folder: str | Path, out_dir: str | Path, *, split: str = "test") -> TaskSet:
    """PubMedQA PQA-L's ``split`` as JSON lines in ``out_dir`` and one task over them.

    ``ori_pqal.json`` is one object keyed by PubMed id and the test ids live in a second
    file, so no builder reads the split directly; the written rows keep the original
    fields (``QUESTION``, ``CONTEXTS``, ``final_decision``) plus ``id``.

    Raises:
        DataError: as :func:`fedlm.eval.loaders.load_pubmedqa`.
    """
    folder, out = _absolute_dir(folder), _out_dir(out_dir)
    items = load_pubmedqa(folder, split=split)  # validates both files and the split
    data = out / f"{PUBMEDQA_TASK}_{split}.jsonl"
    rows = pubmedqa_rows(folder, [item.id for item in items])
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    _write_yaml(
        out / f"{PUBMEDQA_TASK}.yaml",
        {
            "include": str(TEMPLATES / "pubmedqa.yaml"),
            "task": PUBMEDQA_TASK,
            "dataset_kwargs": {"data_files": {"test": str(data)}},
        },
    )
    return TaskSet("pubmedqa", out, PUBMEDQA_TASK, (PUBMEDQA_TASK,), (len(items),), ("pubmedqa",))


TASK_WRITERS: dict[str, Callable[..., TaskSet]] = {
    "mmlu-medical": mmlu_tasks,
    "pubmedqa": pubmedqa_tasks,
}


def write_tasks(benchmark: str, folder: str | Path, out_dir: str | Path, **options) -> TaskSet:
    """Write the lm-eval tasks of ``benchmark`` over the dataset in ``folder`` to ``out_dir``.

    Args:
        benchmark: "mmlu-medical" or "pubmedqa".
        folder: the dataset folder (MMLU-Redux CSVs, or PubMedQA's two JSON files).
        out_dir: where the YAMLs (and PubMedQA's JSON lines) go; created if absent.
        options: passed to the writer (PubMedQA's ``split``).

    Raises:
        DataError: an unknown benchmark, or a missing or malformed dataset.
    """
    if benchmark not in TASK_WRITERS:
        raise DataError(
            f"benchmark {benchmark!r} has no lm-eval tasks; choose one of {sorted(TASK_WRITERS)}"
        )
    return TASK_WRITERS[benchmark](folder, out_dir, **options)


def _absolute_dir(folder: str | Path) -> Path:
    # The YAMLs name absolute paths: lm-eval may run from any working directory.
    return Path(folder).expanduser().resolve()


def _out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_yaml(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


__all__ = [
    "MMLU_GROUP",
    "PUBMEDQA_TASK",
    "TASK_WRITERS",
    "TaskSet",
    "mmlu_tasks",
    "pubmedqa_tasks",
    "write_tasks",
]
