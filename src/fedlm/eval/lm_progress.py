"""A rich progress bar for lm-eval's scoring loop, and its third-party noise summarised.

lm-eval draws several tqdm bars per run (one per task while building requests, one while
tokenising, one while scoring) and lets lm-eval, ``datasets`` and ``transformers`` log
warnings as they come. On a two-core machine a benchmark runs for minutes, so what matters
is one bar with an ETA for the slow part. :func:`quiet_lm_eval` swaps the ``tqdm`` name in
the lm-eval modules that draw bars: the model's scoring loop gets a rich bar, the others
none; warnings are collected and printed as one summary line at the end. ``print`` output
goes to stderr, so a command's JSON on stdout stays parseable.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Loggers whose warnings are summarised instead of streamed.
THIRD_PARTY_LOGGERS = ("lm_eval", "datasets", "transformers", "accelerate", "evaluate")
# Modules whose module-level ``tqdm`` is replaced: the scoring loop, and the quick loops
# around it (building requests per task, tokenising), which get no bar.
SCORING_MODULE = "lm_eval.models.huggingface"
SILENT_MODULES = ("lm_eval.api.task", "lm_eval.api.model")
# What lm-eval says because fedlm hands it a built model object, which is the point.
EXPECTED = (
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


@dataclass
class Noise:
    """Warnings collected while lm-eval ran: ``{(source, first line): count}``."""

    counts: Counter = field(default_factory=Counter)

    def add(self, source: str, message: str) -> None:
        first = message.strip().splitlines()[0] if message.strip() else "(empty)"
        if not any(first.startswith(e) for e in EXPECTED):
            self.counts[(source, first[:160])] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, or "" when nothing was said: how many, of how many kinds, the commonest."""
        if not self.counts:
            return ""
        (source, text), n = self.counts.most_common(1)[0]
        kinds = len(self.counts)
        return (
            f"{self.total} third-party warning(s) of {kinds} kind(s) while scoring; "
            f"most frequent ({n}x, {source}): {text}"
        )


class _Collector(logging.Handler):
    def __init__(self, noise: Noise) -> None:
        super().__init__(level=logging.WARNING)
        self.noise = noise

    def emit(self, record: logging.LogRecord) -> None:
        self.noise.add(record.name, record.getMessage())


class _Bar:
    """The part of tqdm's interface lm-eval uses, drawn as a task of a rich ``Progress``."""

    def __init__(self, progress: Progress | None, iterable: Any = None, *, total: int | None = None,
                 desc: str | None = None, disable: bool = False, **_: Any) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.progress = None if disable else progress
        self.task: TaskID | None = None
        if self.progress is not None:
            self.task = self.progress.add_task(_describe(desc), total=total)

    def __iter__(self) -> Iterator[Any]:
        for value in self.iterable:
            yield value
            self.update(1)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=_describe(desc))

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.refresh()


def _describe(desc: str | None) -> str:
    # lm-eval says "Running loglikelihood requests"; a user reads options scored.
    if desc and "loglikelihood" in desc:
        return "scoring options"
    return desc or "lm-eval"


def progress_bar(console: Console) -> Progress:
    """Description, bar, done/total, elapsed and ETA (the columns of fedlm's round bars)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )


@contextlib.contextmanager
def quiet_lm_eval(*, show: bool = True, console: Console | None = None,
                  label: str = "") -> Iterator[Noise]:
    """Run lm-eval inside: one rich bar for scoring, warnings summarised at the end.

    Args:
        show: draw the bar and print the summary line (on ``console``).
        console: where to draw; a stderr console by default.
        label: prefixed to the bar's description (the benchmark's name).

    Yields:
        The :class:`Noise` collected so far (complete once the block exits).
    """
    import datasets

    console = console or Console(stderr=True)
    noise = Noise()
    progress = progress_bar(console) if show else None
    saved_loggers = _capture_loggers(noise)
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    modules = {name: importlib.import_module(name) for name in (SCORING_MODULE, *SILENT_MODULES)}
    saved_tqdm = {name: module.tqdm for name, module in modules.items()}

    def scoring_bar(*args: Any, **kwargs: Any) -> _Bar:
        if label and kwargs.get("desc"):
            kwargs["desc"] = f"{label}: {_describe(kwargs['desc'])}"
        return _Bar(progress, *args, **kwargs)

    try:
        modules[SCORING_MODULE].tqdm = scoring_bar
        for name in SILENT_MODULES:
            modules[name].tqdm = lambda *a, **k: _Bar(None, *a, **k)
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(sys.stderr), (progress or contextlib.nullcontext()):
            try:
                yield noise
            finally:
                for w in caught:
                    noise.add(w.category.__name__, str(w.message))
    finally:
        for name, module in modules.items():
            module.tqdm = saved_tqdm[name]
        _restore_loggers(saved_loggers)
        if bars_were_on:
            datasets.enable_progress_bars()
    if show and noise.total:
        console.print(f"[dim]{noise.summary()}[/dim]", highlight=False)


def _capture_loggers(noise: Noise) -> list[tuple[logging.Logger, list, bool]]:
    saved = []
    collector = _Collector(noise)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [collector]
        logger.propagate = False
    return saved


def _restore_loggers(saved: list[tuple[logging.Logger, list, bool]]) -> None:
    for logger, handlers, propagate in saved:
        logger.handlers = handlers
        logger.propagate = propagate


__all__ = ["EXPECTED", "Noise", "progress_bar", "quiet_lm_eval"]
