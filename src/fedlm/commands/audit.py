"""``fedlm audit RUN_DIR``: the privacy audit of a finished run.

Rebuilds the run's data (and its canaries) from its ``config.yaml``, loads base + final
adapter, and measures canary exposure and membership inference; writes ``audit.json`` and
``summary.json["audit"]`` next to the run's epsilon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedlm.capabilities import rows_hook
from fedlm.capabilities.privacy_audit import audit_model, participants_of
from fedlm.commands.evaluate import load_run_model
from fedlm.data.federated import build_federated_data
from fedlm.models.loading import cache_dir
from fedlm.report.html import write_report
from fedlm.report.metrics_log import write_json


def audit_run(run_dir: str | Path, *, write: bool = True) -> dict[str, Any]:
    """Audit a finished run: rebuild its data, load base + final adapter, measure.

    Writes ``audit.json``, adds ``audit`` to ``summary.json`` (with the run's epsilon
    beside it) and rewrites ``report.html`` when the run has one.
    """
    run_dir = Path(run_dir)
    config, model, tok = load_run_model(run_dir)
    data = build_federated_data(
        config.data, tok, cache_dir=cache_dir(), rows_hook=rows_hook(config)
    )
    result = audit_model(config, model, tok, data, participants=participants_of(run_dir / "metrics.jsonl"))
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        privacy = summary.get("privacy") or {}
        result["epsilon"] = privacy.get("epsilon")
        result["delta"] = privacy.get("delta")
        if write:
            summary["audit"] = result
            write_json(summary_path, summary)
    if write:
        write_json(run_dir / "audit.json", result)
        if (run_dir / "report.html").is_file():
            write_report(run_dir)
    return result


__all__ = ["audit_run"]
