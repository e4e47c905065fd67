"""Third-party warnings summarised, not streamed.

A one-round DP run printed 70 of dp-accounting's "failed to converge" lines; a user
learns nothing from the 70th. ``summarised_warnings`` collects Python warnings and the
WARNING records of third-party loggers while a command runs, and prints one line per
distinct message with its count at the end. fedlm's own messages are not touched.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class _Collect(logging.Handler):
    def __init__(self, counts: Counter) -> None:
        super().__init__(logging.WARNING)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("fedlm"):
            self.counts[(record.name, record.getMessage().splitlines()[0][:160])] += 1


@contextmanager
def summarised_warnings(console: Console) -> Iterator[Counter]:
    """Collect third-party warnings while the block runs; print a count per message after it."""
    counts: Counter = Counter()
    handler = _Collect(counts)
    root = logging.getLogger()
    absl = logging.getLogger("absl")
    saved = absl.propagate, list(absl.handlers), absl.disabled
    # absl logs straight to stderr otherwise; and a logging.config call elsewhere in the process
    # may have disabled it, which would hide its records from the count too.
    absl.handlers, absl.propagate, absl.disabled = [], True, False
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every one; only the summary is printed
        try:
            yield counts
        finally:
            root.removeHandler(handler)
            absl.propagate, absl.handlers, absl.disabled = saved
            for w in caught:
                counts[(w.category.__name__, str(w.message).splitlines()[0][:160])] += 1
            for (source, message), n in counts.most_common():
                console.print(f"[dim]{n} x {source}: {message}[/]")


__all__ = ["summarised_warnings"]
