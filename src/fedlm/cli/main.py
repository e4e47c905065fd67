"""The ``fedlm`` command line. Every command calls a library function a user could call.

User errors (FedlmError) print one message and exit with status 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedlm.errors import FedlmError

console = Console(stderr=True)
DEVICE_HELP = "where the model computes: cpu, cuda, cuda:N, or auto (a GPU where torch sees one)"


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("-c", "--config", help="experiment YAML (default: the built-in default)", required=required)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlm", description="Federated fine-tuning and pre-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment")
    _add_config_args(run)
    run.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")

    rep = sub.add_parser("report", help="(re)write report.html of a run")
    rep.add_argument("run_dir")

    data = sub.add_parser("data", help="inspect the federated data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="clients, sizes and how non-IID they are")
    _add_config_args(inspect)

    gen = sub.add_parser("generate", help="generate text from base model + a run's adapter")
    gen.add_argument("--run", required=True, help="run directory")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen.add_argument("--device", default="cpu", help=DEVICE_HELP)

    ev = sub.add_parser("eval", help="re-evaluate a run's final adapter on held-out data, or score benchmarks")
    ev.add_argument("--run", help="run directory")
    ev.add_argument("--model", help="score a base model alone (preset, HF directory or hub id); needs --benchmark")
    ev.add_argument("--benchmark", action="append", metavar="NAME",
                    help="offline benchmark to score (mmlu-medical, pubmedqa, qa; repeatable) instead of held-out data")
    ev.add_argument("--path", help="dataset folder of the one --benchmark (default from the run's eval_harness)")
    ev.add_argument("--max-items", type=int, help="score an evenly spaced subset of this many items")
    ev.add_argument("--chat", action="store_true", default=None, help="wrap prompts in the chat template")
    ev.add_argument("--device", default="cpu", help=DEVICE_HELP)

    aud = sub.add_parser("audit", help="privacy audit of a finished run: canary exposure and MIA AUC")
    aud.add_argument("run_dir")

    from fedlm.cli.explain import add_explain_parser

    add_explain_parser(sub)  # fedlm explain contribution|tokens
    from fedlm.cli.deploy import add_deploy_parser

    add_deploy_parser(sub)  # fedlm deploy app|local (Flower)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FedlmError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        again = "fedlm deploy local --resume RUN_DIR" if getattr(args, "command", None) == "deploy" else "fedlm run --resume RUN_DIR"
        console.print(f"[yellow]interrupted[/]; continue with: {again}")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from fedlm.config.loader import load_config

    if args.command == "run":
        from fedlm.commands.experiment import resume_experiment, run_experiment

        if args.resume:
            result = resume_experiment(args.resume, overrides=args.overrides, console=console)
        else:
            config = load_config(args.config, args.overrides)
            result = run_experiment(config, out_dir=args.out, console=console)
        _print_summary(result.summary, result.run_dir)
        return 0
    if args.command == "report":
        from fedlm.report.html import write_report

        print(write_report(args.run_dir))
        return 0
    if args.command == "data":
        from fedlm.commands.evaluate import inspect_data

        config = load_config(args.config, args.overrides)
        _print_inspect(inspect_data(config))
        return 0
    if args.command == "generate":
        from fedlm.commands.evaluate import generate

        print(generate(args.run, args.prompt, max_new_tokens=args.max_new_tokens, chat=args.chat, device=args.device))
        return 0
    if args.command == "audit":
        from fedlm.commands.audit import audit_run

        print(json.dumps(audit_run(args.run_dir), indent=2))
        return 0
    if args.command == "deploy":
        from fedlm.cli.deploy import run_deploy

        return run_deploy(args)
    if args.command == "explain":
        from fedlm.cli.explain import run_explain

        return run_explain(args)
    if args.command == "eval":
        from fedlm.commands.evaluate import benchmark_scores, evaluate_run

        if args.benchmark or args.model:  # offline benchmarks of a run or of a base model alone
            result = benchmark_scores(run_dir=args.run, model_name=args.model, benchmarks=args.benchmark,
                                      path=args.path, max_items=args.max_items, chat=args.chat, device=args.device)
            print(json.dumps(result, indent=2))
            return 0
        if not args.run:
            raise FedlmError("fedlm eval needs --run RUN_DIR (held-out data), or --benchmark NAME with --run or --model")
        print(json.dumps(evaluate_run(args.run, device=args.device), indent=2))
        return 0
    raise FedlmError(f"unknown command {args.command!r}")  # argparse rejects these first


def _print_summary(summary: dict, run_dir: Path) -> None:
    init, final, comm = summary["initial"], summary["final"], summary["communication"]
    table = Table(title=f"fedlm run: {summary['name']}", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("held-out perplexity", f"{init['perplexity']:.3f} -> {final['perplexity']:.3f}")
    table.add_row("held-out loss", f"{init['eval_loss']:.4f} -> {final['eval_loss']:.4f}")
    table.add_row("rounds", str(summary["rounds_completed"]))
    table.add_row("bytes up / down", f"{comm['bytes_up']:,} / {comm['bytes_down']:,}")
    table.add_row("rejected updates", str(summary["robustness"]["rejected"]))
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("run directory", str(run_dir))
    Console().print(table)


def _print_inspect(info: dict) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
