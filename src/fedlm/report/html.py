"""report.html: a self-contained page (plots embedded as PNG, no network) for a run."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fedlm.report.benchmarks import benchmark_section
from fedlm.report.explain import (
    attribution_section,
    audit_section,
    bias_section,
    contribution_section,
)
from fedlm.report.figures import bar_plot as _bar_plot
from fedlm.report.figures import line_plot as _line_plot
from fedlm.report.figures import table as _table
from fedlm.report.labels import label_section
from fedlm.report.metrics_log import MetricsLog
from fedlm.report.personal import fairness_section, personal_section
from fedlm.report.privacy import privacy_section
from fedlm.report.robustness import robustness_section
from fedlm.report.secagg import secagg_section

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:1rem} .grid img{max-width:520px;border:1px solid #eee}
.muted{color:#777}
.scroll{overflow-x:auto;max-width:100%} .scroll table{font-size:.85rem}
details summary{cursor:pointer;color:#555}
"""


def render_report(summary: dict[str, Any], records: list[dict[str, Any]], config_text: str = "") -> str:
    """The report page as a string."""
    rounds = [r for r in records if r.get("type") == "round"]
    evals = [r for r in records if r.get("type") == "eval"]
    sections: list[str] = []

    init, final = summary.get("initial", {}), summary.get("final", {})
    comm = summary.get("communication", {})
    overview = [
        ["rounds completed", summary.get("rounds_completed")],
        ["held-out perplexity (before → after)", f"{init.get('perplexity', float('nan')):.3f} → {final.get('perplexity', float('nan')):.3f}"],
        ["held-out loss (before → after)", f"{init.get('eval_loss', float('nan')):.4f} → {final.get('eval_loss', float('nan')):.4f}"],
        ["bytes up / down", f"{comm.get('bytes_up', 0):,} / {comm.get('bytes_down', 0):,}"],
        ["rejected updates", (summary.get("robustness") or {}).get("rejected", 0)],
        ["wall time (s)", round(float(summary.get("wall_seconds", 0.0)), 1)],
    ]
    sections.append("<h2>Overview</h2>" + _table(["", "value"], overview))
    sections.append(privacy_section(summary, rounds, table=_table, line_plot=_line_plot))  # epsilon, audit
    sections.append(secagg_section(summary, table=_table))  # cohort, survivors, dropouts per phase
    sections.append(robustness_section(summary, rounds, table=_table, line_plot=_line_plot))  # attack, defence

    plots = []
    ex = [r["round"] for r in evals]
    plots.append(_line_plot("Loss", "nats/token", {
        "held-out": (ex, [r.get("eval_loss") for r in evals]),
        "train (mean of cohort)": ([r["round"] for r in rounds], [r.get("train_loss") for r in rounds]),
    }))
    plots.append(_line_plot("Held-out perplexity", "perplexity", {"held-out": (ex, [r.get("perplexity") for r in evals])}))
    if rounds:
        plots.append(_line_plot("Communication per round", "bytes", {
            "up": ([r["round"] for r in rounds], [r["bytes_up"] for r in rounds]),
            "down": ([r["round"] for r in rounds], [r["bytes_down"] for r in rounds]),
        }))
    clients = summary.get("clients", {})
    if clients:
        ids = sorted(clients)
        plots.append(_bar_plot("Per-client held-out perplexity", "perplexity", ids, {
            "before": [(clients[c].get("initial") or {}).get("perplexity") or 0.0 for c in ids],
            "after": [(clients[c].get("final") or {}).get("perplexity") or 0.0 for c in ids],
        }))
    sections.append("<h2>Learning curves</h2><div class='grid'>" + "".join(f"<img src='{p}' alt='plot'>" for p in plots) + "</div>")

    rows = [
        [cid, (m.get("initial") or {}).get("perplexity"), (m.get("final") or {}).get("perplexity"),
         (m.get("final") or {}).get("token_accuracy"), (m.get("final") or {}).get("tokens")]
        for cid, m in sorted(clients.items())
    ]
    sections.append("<h2>Clients</h2>" + _table(["client", "perplexity before", "perplexity after", "token accuracy", "held-out tokens"], rows))
    sections.append(label_section(summary))  # per-client label histogram, when the data has labels
    sections.append(fairness_section(summary, table=_table))  # mean, std, worst 10%, Jain's index
    sections.append(personal_section(summary, table=_table, bar_plot=_bar_plot))  # global vs personal per client
    sections.append(benchmark_section(summary, table=_table))  # eval_harness: base vs final model

    sections.append(contribution_section(summary, table=_table, bar_plot=_bar_plot, line_plot=_line_plot))
    sections.append(audit_section(rounds, table=_table))  # cohort, dropouts, rejections, norms, epsilon, bytes, time
    sections.append(attribution_section(summary))  # fedlm explain tokens, when one was asked for
    sections.append(bias_section(summary, table=_table))  # eval.bias_probe
    if config_text:
        sections.append(config_section(config_text))
    title = html.escape(f"fedlm report: {summary.get('name', 'run')}")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        f"<p class='muted'>model {html.escape(str(summary.get('model')))} · "
        f"{summary.get('trainable_parameters', 0):,} trainable parameters</p>"
        f"<p class='muted'>{html.escape(data_line(summary))}</p>"
        + "".join(sections) + "</body></html>"
    )


def data_line(summary: dict[str, Any]) -> str:
    """The header's data line: the source, its format, the clients and their examples."""
    d = summary.get("data") or {}
    source = d.get("source", "data")
    where = f" ({d['path']})" if d.get("path") else ""
    return (f"data: {source}{where}, {d.get('format', '?')} format · {d.get('clients', '?')} clients · "
            f"{d.get('train_examples', 0):,} train / {d.get('heldout_examples', 0):,} held-out examples · "
            f"engine: {summary.get('engine', 'simulation')}")


def config_section(config_text: str) -> str:
    """The resolved config: the values that differ from fedlm's defaults, the rest folded away."""
    changed = non_default_yaml(config_text)
    return ("<h2>Config</h2><p class='muted'>values that differ from the built-in default</p>"
            f"<pre>{html.escape(changed or '(the built-in default)')}</pre>"
            f"<details><summary>the whole resolved config</summary><pre>{html.escape(config_text)}</pre></details>")


def non_default_yaml(config_text: str) -> str:
    """The keys of a resolved config whose values differ from ``ExperimentConfig()``'s, as YAML."""
    import yaml

    from fedlm.config.schema import ExperimentConfig

    try:
        given = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        return config_text
    default = ExperimentConfig().model_dump(mode="json")

    def diff(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = {k: d for k, v in a.items() if (d := diff(v, b.get(k))) is not None}
            return out or None
        return None if a == b else a

    changed = diff(given, default)
    return yaml.safe_dump(changed, sort_keys=False).strip() if changed else ""


def write_report(run_dir: str | Path) -> Path:
    """Render ``run_dir/report.html`` from its summary and metrics."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    cfg = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").exists() else ""
    out = run_dir / "report.html"
    out.write_text(render_report(summary, records, cfg), encoding="utf-8")
    return out
