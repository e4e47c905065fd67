"""metrics.jsonl: one JSON object per round and per evaluation, appended as they happen."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedlm.errors import FedlmError


def _clean(obj: Any) -> Any:
    """NaN and infinities become null, so every line is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def line(record: dict[str, Any]) -> str:
    """One record as its ``metrics.jsonl`` line (strict JSON, sorted keys, newline)."""
    return json.dumps(_clean(record), sort_keys=True) + "\n"


class MetricsLog:
    """Append-only JSONL log; ``rewrite`` sets it back to a checkpoint's records."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line(record))
        except OSError as exc:
            raise FedlmError(f"could not append to {self.path}: {exc.strerror or exc}; free space or fix "
                             "permissions, then resume the run with --resume") from None

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log by ``records`` (written to a temporary file, then renamed)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line(r) for r in records), encoding="utf-8")
        tmp.replace(self.path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_after(self, round_: int) -> None:
        self.rewrite([r for r in self.read() if r.get("round", 0) <= round_])


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n", encoding="utf-8")
