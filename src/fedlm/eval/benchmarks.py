"""The benchmark registry and the calls the rest of fedlm makes: ``run_benchmark(s)``.

* ``mmlu-medical`` (MMLU-Redux, Gema et al. 2024) and ``pubmedqa`` (PQA-L, Jin et al. 2019)
  are scored by lm-evaluation-harness over the local files: :func:`score_benchmark` writes
  the tasks for the dataset folder (:mod:`fedlm.eval.lm_tasks`) into a temporary folder and
  scores them with the model object fedlm holds (:mod:`fedlm.eval.likelihood`).
* ``qa`` generates answers and scores them by exact match and ROUGE-L, by hand
  (:mod:`fedlm.eval.harness` says why lm-eval cannot serve it).

Paths come from arguments or ``EvalHarnessConfig``; relative paths are resolved against the
current working directory, and the defaults are ``../shared/datasets/<name>``.
:func:`dataset_folder` maps a datasets root (``$FEDLM_DATA``) to a benchmark's folder.
The loaders are re-exported from :mod:`fedlm.eval.loaders`, where they live.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from fedlm.config.eval_harness import (
    DEFAULT_MMLU_PATH,
    DEFAULT_PUBMEDQA_PATH,
    EVAL_BENCHMARKS,
    EvalHarnessConfig,
)
from fedlm.errors import DataError
from fedlm.eval.harness import qa_generation_scores
from fedlm.eval.likelihood import label_metrics, mc_metrics, score_tasks
from fedlm.eval.lm_tasks import write_tasks
from fedlm.eval.loaders import load_mmlu_redux, load_pubmedqa, load_qa_jsonl


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: where its data is, and how to score a model on that folder.

    ``score(model, tokenizer, folder, *, chat, batch_size, max_items, progress, console,
    load_options, score_options) -> metrics``.
    """

    name: str
    config_field: str  # the EvalHarnessConfig field holding its path
    default_path: str
    score: Callable[..., dict]

    @property
    def folder_name(self) -> str:
        """Its folder's name under a datasets root ("" when it names a file, as qa does)."""
        return Path(self.default_path).name


def _lm_eval_scorer(name: str, summarise: Callable[..., dict]) -> Callable[..., dict]:
    """A scorer that writes benchmark ``name``'s lm-eval tasks and summarises the items."""

    def score(model, tokenizer, folder: Path, *, chat: bool, batch_size: int,
              max_items: int | None, progress: bool = True, console: Console | None = None,
              load_options: dict | None = None, score_options: dict | None = None) -> dict:
        with tempfile.TemporaryDirectory(prefix=f"fedlm-{name}-tasks-") as tmp:
            task_set = write_tasks(name, folder, tmp, **(load_options or {}))
            scores = score_tasks(model, tokenizer, task_set, chat=chat, batch_size=batch_size,
                                 max_items=max_items, progress=progress, console=console,
                                 **(score_options or {}))
        return summarise(scores, task_set)

    return score


def _qa_scorer(model, tokenizer, path: Path, *, chat: bool, batch_size: int,
               max_items: int | None, progress: bool = True, console: Console | None = None,
               load_options: dict | None = None, score_options: dict | None = None) -> dict:
    items = load_qa_jsonl(path, **(load_options or {}))
    return qa_generation_scores(model, tokenizer, items, chat=chat, batch_size=batch_size,
                                max_items=max_items, **(score_options or {}))


# The factories ``fedlm.config.eval_harness.EVAL_BENCHMARKS`` names (the single source of benchmark names).
def mmlu_medical() -> Benchmark:
    return Benchmark("mmlu-medical", "mmlu_path", DEFAULT_MMLU_PATH, _lm_eval_scorer("mmlu-medical", mc_metrics))


def pubmedqa() -> Benchmark:
    return Benchmark("pubmedqa", "pubmedqa_path", DEFAULT_PUBMEDQA_PATH,
                     _lm_eval_scorer("pubmedqa", lambda scores, _: label_metrics(scores)))


def qa() -> Benchmark:
    return Benchmark("qa", "qa_path", "", _qa_scorer)


def dataset_folder(name: str, root: str | Path) -> Path:
    """Benchmark ``name``'s folder under a datasets root laid out like ``shared/datasets``
    (``root/mmlu-redux-medical``, ``root/pubmedqa``), e.g. ``$FEDLM_DATA``.

    Raises:
        ConfigError: ``name`` is not registered.
        DataError: the benchmark reads a file the user names (qa), not a folder.
    """
    spec = EVAL_BENCHMARKS.create(name)
    if not spec.folder_name:
        raise DataError(f"{name} reads a file you name (eval_harness.{spec.config_field}); "
                        "it has no folder under a datasets root")
    return Path(root).expanduser() / spec.folder_name


def score_benchmark(
    name: str,
    model: torch.nn.Module,
    tokenizer,
    folder: str | Path,
    *,
    max_items: int | None = None,
    chat: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    console: Console | None = None,
    load_options: dict | None = None,
    score_options: dict | None = None,
) -> dict:
    """Score benchmark ``name`` on the dataset in ``folder`` (a file for ``qa``).

    Args:
        name: "mmlu-medical", "pubmedqa" or "qa".
        model, tokenizer: a transformers causal LM (PEFT-wrapped or not) and its tokenizer.
        folder: the dataset's folder; relative paths are taken from the working directory.
        max_items: at most this many items, evenly spaced (None: all).
        chat: score in the tokenizer's chat template.
        batch_size: rows per forward pass.
        progress: draw a progress bar with an ETA (the qa benchmark draws none).
        console: where to draw it (a stderr console by default); a caller showing its own
            live display passes its console, and the bar nests in it.
        load_options: passed to the task writer or loader (PubMedQA's ``split``, MMLU's
            ``subjects``, qa's field names).
        score_options: passed to the scorer (``trim_logits``, ``max_length``; qa's
            ``max_new_tokens``).

    Returns:
        The scorer's metrics plus ``"benchmark"`` and ``"path"``.

    Raises:
        ConfigError: ``name`` is not registered.
        DataError: the dataset is absent or malformed.
    """
    spec = EVAL_BENCHMARKS.create(name)
    folder = Path(folder).expanduser()
    if not str(folder) or not folder.exists():
        raise DataError(
            f"{name}: dataset folder {folder} (resolved to {folder.resolve()}) does not exist; "
            f"set eval_harness.{spec.config_field} or pass path="
        )
    result = spec.score(model, tokenizer, folder, chat=chat, batch_size=batch_size,
                        max_items=max_items, progress=progress, console=console,
                        load_options=load_options, score_options=score_options)
    return {"benchmark": name, "path": str(folder), **result}


def run_benchmark(
    name: str,
    model: torch.nn.Module,
    tokenizer,
    *,
    path: str | Path | None = None,
    max_items: int | None = None,
    chat: bool = False,
    batch_size: int = 8,
    load_options: dict | None = None,
    score_options: dict | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> dict:
    """:func:`score_benchmark` with the folder defaulting to ``../shared/datasets/...``."""
    spec = EVAL_BENCHMARKS.create(name)
    return score_benchmark(
        name, model, tokenizer, path if path is not None else spec.default_path,
        max_items=max_items, chat=chat, batch_size=batch_size, progress=progress,
        console=console, load_options=load_options, score_options=score_options,
    )


def run_benchmarks(
    cfg: EvalHarnessConfig,
    model: torch.nn.Module,
    tokenizer,
    *,
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, dict]:
    """Run every benchmark of ``cfg`` in order; ``{name: metrics}``.

    ``progress`` and ``console`` as for :func:`score_benchmark`.
    """
    return {
        name: run_benchmark(
            name,
            model,
            tokenizer,
            path=getattr(cfg, EVAL_BENCHMARKS.create(name).config_field),
            max_items=cfg.max_items,
            chat=cfg.chat,
            batch_size=cfg.batch_size,
            progress=progress,
            console=console,
            **(_qa_options(cfg) if name == "qa" else {}),
        )
        for name in cfg.benchmarks
    }


def _qa_options(cfg: EvalHarnessConfig) -> dict[str, dict]:
    return {
        "load_options": {"question_field": cfg.qa_question_field, "answer_field": cfg.qa_answer_field,
                         "context_field": cfg.qa_context_field},
        "score_options": {"max_new_tokens": cfg.max_new_tokens},
    }


__all__ = [
    "EVAL_BENCHMARKS",
    "Benchmark",
    "dataset_folder",
    "load_mmlu_redux",
    "load_pubmedqa",
    "load_qa_jsonl",
    "run_benchmark",
    "run_benchmarks",
    "score_benchmark",
]
