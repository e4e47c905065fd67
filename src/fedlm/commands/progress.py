"""Progress on screen for the round loop: a rounds bar and a clients bar, each with an ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedlm.engine.loop import LoopObserver


def progress_bar(console: Console, *, transient: bool = False) -> Progress:
    """The bar every long fedlm job shows: description, bar, done/total, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=transient,
    )


class RoundProgress(LoopObserver):
    """Draws the loop's progress and prints one line per evaluated round."""

    def __init__(self, console: Console, *, total: int, done: int) -> None:
        self.progress = progress_bar(console)
        self.rounds = self.progress.add_task("rounds", total=total, completed=done)
        self.clients = self.progress.add_task("clients", total=1, visible=False)

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def round_started(self, round_id: int, cohort_size: int) -> None:
        self.progress.reset(self.clients, total=max(cohort_size, 1), description=f"round {round_id} clients",
                            visible=True)

    def client_done(self, client_id: str) -> None:
        task = self.progress.tasks[self.clients]
        if task.total is not None and task.completed + 1 > task.total:  # a Poisson cohort may exceed its expected size
            self.progress.update(self.clients, total=task.completed + 1)
        self.progress.advance(self.clients)

    def round_done(self, record: dict[str, Any], evaluation: dict[str, Any] | None) -> None:
        if evaluation is not None:
            loss = record["train_loss"] if record["train_loss"] is not None else float("nan")
            self.progress.console.print(
                f"round {record['round']}: train loss {loss:.4f}, held-out perplexity {evaluation['perplexity']:.2f}"
            )
        self.progress.advance(self.rounds)

    def stopped(self, reason: str) -> None:
        self.progress.console.print(f"stopping: {reason}")


__all__ = ["RoundProgress", "progress_bar"]
