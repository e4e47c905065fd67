"""What the ``fedlm`` commands print: the run's closing table and the data inspection."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlm.report.headline import headline_rows


def print_summary(summary: dict, run_dir: Path) -> None:
    """The closing table of ``fedlm run``; it names whose held-out data the perplexity is on."""
    init, final, comm = summary["initial"], summary["final"], summary["communication"]
    table = Table(title=f"fedlm run: {summary['name']}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    scored = f" ({len(summary.get('clients') or {})} eval clients)" if summary.get("clients") else ""
    table.add_row(f"held-out perplexity{scored}", f"{init['perplexity']:.3f} -> {final['perplexity']:.3f}")
    table.add_row("held-out loss", f"{init['eval_loss']:.4f} -> {final['eval_loss']:.4f}")
    table.add_row("rounds", str(summary["rounds_completed"]))
    table.add_row("bytes up / down", f"{comm['bytes_up']:,} / {comm['bytes_down']:,}")
    table.add_row("rejected updates", str(summary["robustness"]["rejected"]))
    for label, value in headline_rows(summary):  # what each enabled capability did
        table.add_row(label, value)
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("run directory", str(run_dir))
    Console().print(table)


def print_inspect(info: dict) -> None:
    """``fedlm data inspect``: clients and sizes, the label histogram, and the non-IID measures."""
    s = info["summary"]
    table = Table(title=f"{s['clients']} clients, {s['train_examples']} train / {s['heldout_examples']} held-out examples ({s['format']})")
    for col in ("client", "train", "held-out", "chars", "labels"):
        table.add_column(col, justify="left" if col in ("client", "labels") else "right")
    for row in info["clients"]:
        table.add_row(row["client"], str(row["train"]), str(row["heldout"]), f"{row['chars']:,}", row["labels"])
    out = Console()
    out.print(table)
    if s.get("label_counts"):  # per-client label histogram (data.label_field)
        from fedlm.report.labels import label_table

        header, rows = label_table(s["label_counts"])
        hist = Table(title="label histogram: records per client and label")
        for col in header:
            hist.add_column(col, justify="left" if col == "client" else "right")
        for row in rows:
            hist.add_row(*(str(v) for v in row))
        out.print(hist)
    tv = f"{s['label_tv']:.3f}" if s["label_tv"] is not None else "n/a (no data.label_field)"
    out.print(
        f"sizes: min {s['size_min']}, median {s['size_median']:.0f}, max {s['size_max']}, Gini {s['size_gini']:.3f}; "
        f"label skew (mean total variation to the global mix): {tv}; "
        f"vocabulary skew (mean Jensen-Shannon divergence of token frequencies): {info['token_js']:.3f}"
    )


__all__ = ["print_inspect", "print_summary"]
