"""Third-party warnings are counted and summarised, not streamed."""

from __future__ import annotations

import io
import logging
import warnings

from rich.console import Console

from fedlm.commands.quiet import summarised_warnings


def test_seventy_identical_warnings_become_one_line_with_their_count() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    with summarised_warnings(console) as counts:
        for _ in range(70):
            logging.getLogger("absl").warning("failed to converge")
        for _ in range(3):
            warnings.warn("deprecated thing", FutureWarning, stacklevel=1)
        logging.getLogger("fedlm.data").warning("a client was dropped")  # fedlm's own: not collected
    assert counts[("absl", "failed to converge")] == 70
    assert counts[("FutureWarning", "deprecated thing")] == 3
    text = out.getvalue()
    assert "70 x absl: failed to converge" in text and "3 x FutureWarning: deprecated thing" in text
    assert text.count("failed to converge") == 1 and "dropped" not in text
