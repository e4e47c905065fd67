"""The report's privacy section: the formal (epsilon, delta) next to the empirical audits.

The accountant's epsilon, the one-run audit's lower bound (``privacy.audit``), epsilon
against the server in the client noise modes, whether amplification by sampling is
claimed and why, and the run's caveats; then canary exposure and membership inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def privacy_section(
    summary: dict[str, Any],
    rounds: list[dict[str, Any]],
    *,
    table: Callable[[list[str], list[list[Any]]], str],
    line_plot: Callable[[str, str, dict[str, tuple[list[float], list[float]]]], str],
) -> str:
    """HTML for ``summary["privacy"]`` and ``summary["audit"]`` ('' when neither is set).

    ``table`` and ``line_plot`` are the report's own helpers, passed in so that this module
    does not import the report module.
    """
    p, a = summary.get("privacy") or {}, summary.get("audit") or {}
    if not p and not a:
        return ""
    rows: list[list[Any]] = []
    if p:
        eps = p.get("epsilon")
        rows.append(["epsilon (at delta)", f"{eps:.4g} at delta={p.get('delta'):g}" if eps is not None else "-"])
        audit = p.get("audit") or {}
        if audit:
            rows.append([f"audited epsilon (lower bound, {audit['confidence']:.0%} confidence)",
                         f"{audit['epsilon_lower_bound']:.4g} from {audit['canaries']} canary clients"
                         + (" -- ABOVE the reported epsilon: the mechanism is broken" if audit.get("flag") else "")])
        if p.get("epsilon_server") is not None:
            rows.append(["epsilon against the server (no amplification)", f"{p['epsilon_server']:.4g}"])
        if p.get("level") == "client":
            rows.append(["amplification by sampling", "claimed (secret cohorts)" if p.get("amplified") else
                         "not claimed (" + ("public sampling key: cohorts recomputable from config.yaml)"
                                            if p.get("sampling_key") == "public" else "no random sampling)")])
        if p.get("accountant"):
            rows.append(["accountant", f"{p.get('accountant')} ({p.get('level', 'client')}-level)"])
        for key in ("noise_multiplier", "noise_multiplier_source", "mode", "sampling", "sample_rate",
                    "clip_norm", "final_clip_norm", "sensitivity", "encoding_margin", "weighting", "target_epsilon",
                    "stop_reason"):
            if p.get(key) is not None:
                rows.append([key.replace("_", " "), p[key]])
        for kind, value in (p.get("epsilon_by_accountant") or {}).items():
            if value is not None:
                rows.append([f"epsilon by {kind}", f"{value:.4g}"])
        if p.get("dp_sgd"):
            rows.append(["DP-SGD epsilon (worst client)", f"{p['dp_sgd']['epsilon_max']:.4g}"])
        for note in p.get("caveats") or []:
            rows.append(["what epsilon does not cover", note])
    if a:
        if a.get("exposure_mean") is not None:
            rows.append(["canary exposure mean / max (bits)",
                         f"{a['exposure_mean']:.3f} / {a['exposure_max']:.3f} of {a['exposure_ceiling']:.2f}"])
        if a.get("mia_auc") is not None:
            rows.append(["membership inference AUC (loss)", f"{a['mia_auc']:.4f}"])
    html = "<h2>Privacy</h2>" + table(["", "value"], rows)
    pts = [(r["round"], (r.get("privacy") or {}).get("epsilon")) for r in rounds]
    pts = [(x, y) for x, y in pts if y is not None]
    if pts:
        img = line_plot("Privacy spent", "epsilon", {"epsilon": ([x for x, _ in pts], [y for _, y in pts])})
        html += f"<div class='grid'><img src='{img}' alt='plot'></div>"
    return html
