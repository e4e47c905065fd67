"""The ``fedlm`` command line. Every command calls a library function a user could call.

User errors (FedlmError) print one message and exit with status 2; anything else is
a bug and keeps its traceback. Arguments are checked before anything slow loads: a wrong
``--out``, run directory or sampling flag fails in a second, not after the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from fedlm.errors import ConfigError, FedlmError

console = Console(stderr=True)
DEVICE_HELP = "where the model computes: cpu, cuda, cuda:N, or auto (a GPU where torch sees one)"


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("-c", "--config", required=required,
                   help="experiment YAML, or a packaged example's name (dp, medical, ...; see `fedlm init`); "
                        "default: the built-in default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlm", description="Federated fine-tuning and pre-training of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment")
    _add_config_args(run)
    run.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint, with its own config.yaml "
                          "(--set may change federation.rounds; -c only when it is the same experiment)")

    rep = sub.add_parser("report", help="(re)write report.html and the adapter's model card of a run")
    rep.add_argument("run_dir")

    data = sub.add_parser("data", help="inspect the federated data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="clients, sizes and how non-IID they are")
    _add_config_args(inspect)

    gen = sub.add_parser("generate", help="generate text from base model + a run's adapter (greedy by default)")
    gen.add_argument("--run", required=True, help="run directory")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--client", metavar="ID", help="use client ID's personal model (runs with personal.method)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (the default); above 0 samples")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the smallest set of tokens "
                                                               "reaching this probability (needs --temperature)")
    gen.add_argument("--seed", type=int, default=0, help="seed of sampling")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen.add_argument("--device", default="cpu", help=DEVICE_HELP)

    ev = sub.add_parser("eval", help="re-evaluate a run's final adapter on held-out data, or score benchmarks")
    ev.add_argument("--run", help="run directory")
    ev.add_argument("--clients", choices=["run", "all"], default="run",
                    help="held-out data of the run's evaluation clients (reproduces the run's table; default) "
                         "or of every client")
    ev.add_argument("--model", help="score a base model alone (preset, HF directory or hub id); needs --benchmark")
    ev.add_argument("--benchmark", action="append", metavar="NAME",
                    help="offline benchmark to score (mmlu-medical, pubmedqa, qa; repeatable) instead of held-out data")
    ev.add_argument("--path", help="dataset folder (qa: file) of the one --benchmark; default: the run's "
                                   "eval_harness, else $FEDLM_DATA/mmlu-redux-medical or $FEDLM_DATA/pubmedqa")
    ev.add_argument("--max-items", type=int, help="score an evenly spaced subset of this many items")
    ev.add_argument("--chat", action="store_true", default=None, help="wrap prompts in the chat template")
    ev.add_argument("--device", default="cpu", help=DEVICE_HELP)

    aud = sub.add_parser("audit", help="privacy audit of a finished run: canary exposure and MIA AUC")
    aud.add_argument("run_dir")

    from fedlm.cli.tools import add_tool_parsers

    add_tool_parsers(sub, _add_config_args)  # fedlm init | config show | export
    from fedlm.cli.explain import add_explain_parser

    add_explain_parser(sub)  # fedlm explain contribution|tokens
    from fedlm.cli.deploy import add_deploy_parser

    add_deploy_parser(sub)  # fedlm deploy app|local (Flower)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fedlm.commands.quiet import summarised_warnings

    try:
        with summarised_warnings(console):  # third-party warnings: one line per message, with its count
            return _dispatch(args)
    except FedlmError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        again = "fedlm deploy local --resume RUN_DIR" if getattr(args, "command", None) == "deploy" else "fedlm run --resume RUN_DIR"
        console.print(f"[yellow]interrupted[/]; continue with: {again}")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from fedlm.config.loader import load_config, require_resolved

    if args.command == "run":
        return _run(args)
    if args.command == "report":
        from fedlm.commands.run_dir import require_run_dir
        from fedlm.report.html import write_report

        run_dir = require_run_dir(args.run_dir, need=("summary.json", "metrics.jsonl"))
        print(write_report(run_dir))
        _refresh_card(run_dir)
        return 0
    if args.command == "data":
        from fedlm.cli.output import print_inspect
        from fedlm.commands.evaluate import inspect_data

        print_inspect(inspect_data(require_resolved(load_config(args.config, args.overrides))))
        return 0
    if args.command == "generate":
        from fedlm.commands.generate import Sampling, generate
        from fedlm.commands.run_dir import require_run_dir

        Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)  # checks
        print(generate(require_run_dir(args.run), args.prompt, max_new_tokens=args.max_new_tokens, chat=args.chat,
                       device=args.device, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                       client=args.client))
        return 0
    if args.command == "audit":
        from fedlm.commands.audit import audit_run
        from fedlm.commands.run_dir import require_run_dir

        print(json.dumps(audit_run(require_run_dir(args.run_dir)), indent=2))
        return 0
    if args.command in ("init", "config", "export"):
        from fedlm.cli.tools import run_tool

        return run_tool(args, console)
    if args.command == "deploy":
        from fedlm.cli.deploy import run_deploy

        return run_deploy(args)
    if args.command == "explain":
        from fedlm.cli.explain import run_explain

        return run_explain(args)
    if args.command == "eval":
        return _eval(args)
    raise FedlmError(f"unknown command {args.command!r}")  # argparse rejects these first


def _run(args: argparse.Namespace) -> int:
    """``fedlm run``: a new run, or ``--resume`` of one (refusing flags that would be ignored)."""
    # Only the light modules until the config and directories are checked: a typo in a
    # flag is reported in a second, not after torch and transformers load.
    from fedlm.commands.run_dir import (
        check_out_dir,
        default_run_dir,
        require_run_dir,
        resume_config,
    )
    from fedlm.config.loader import load_config, require_resolved

    if args.resume:
        run_dir = require_run_dir(args.resume, what="run to resume")
        if args.out and Path(args.out).expanduser().resolve() != run_dir.resolve():
            raise ConfigError(f"--resume continues {run_dir} in place, so --out {args.out} would be ignored; drop "
                              "--out, or start a new run with -c CONFIG --out DIR")
        config = load_config(run_dir / "config.yaml", args.overrides)
        if args.config:
            config = resume_config(config, load_config(args.config, args.overrides))
            console.print(f"-c {args.config} is the experiment of {run_dir}; continuing with it", soft_wrap=True)
        config, out_dir, resume = require_resolved(config), run_dir, True
    else:
        config = require_resolved(load_config(args.config, args.overrides))
        check_out_dir(default_run_dir(config, args.out))  # before the model loads
        out_dir, resume = args.out, False
    from fedlm.cli.output import print_summary
    from fedlm.commands.experiment import run_experiment

    result = run_experiment(config, out_dir=out_dir, resume=resume, console=console)
    print_summary(result.summary, result.run_dir)
    _refresh_card(result.run_dir)
    return 0


def _eval(args: argparse.Namespace) -> int:
    """``fedlm eval``: held-out data of a run (saying what is scored), or offline benchmarks."""
    if args.benchmark or args.model:  # offline benchmarks of a run or of a base model alone
        from fedlm.commands.benchmark import benchmark_scores

        result = benchmark_scores(run_dir=args.run, model_name=args.model, benchmarks=args.benchmark,
                                  path=args.path, max_items=args.max_items, chat=args.chat, device=args.device,
                                  console=console)
        print(json.dumps(result, indent=2))
        return 0
    if not args.run:
        raise FedlmError("fedlm eval needs --run RUN_DIR (held-out data), or --benchmark NAME with --run or --model")
    from fedlm.commands.evaluate import evaluate_run
    from fedlm.commands.run_dir import require_run_dir

    result = evaluate_run(require_run_dir(args.run), device=args.device, clients=args.clients)
    console.print(f"held-out perplexity {result['perplexity']:.4g}: {result['note']}", highlight=False,
                  soft_wrap=True)
    print(json.dumps(result, indent=2))
    return 0


def _refresh_card(run_dir: Path) -> None:
    """Fill the run adapter's model card from its summary (the run writes the adapter before the summary)."""
    from fedlm.commands.export import refresh_run_card

    refresh_run_card(run_dir)

if __name__ == "__main__":
    sys.exit(main())
