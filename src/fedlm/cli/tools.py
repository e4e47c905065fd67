"""``fedlm init``, ``fedlm config show`` and ``fedlm export``: thin wrappers over ``fedlm.commands``."""

from __future__ import annotations

import argparse

from rich.console import Console


def add_tool_parsers(sub: argparse._SubParsersAction, add_config_args) -> None:
    """Add ``init``, ``config`` and ``export`` to the ``fedlm`` parser."""
    ini = sub.add_parser("init", help="copy a packaged example config out to edit (no NAME: list them)")
    ini.add_argument("name", nargs="?", help="example name, e.g. dp (see `fedlm init`)")
    ini.add_argument("dir", nargs="?", default=".", help="folder (or .yaml file name) to copy it to (default: .)")
    ini.add_argument("--force", action="store_true", help="overwrite an existing config file")

    cfg = sub.add_parser("config", help="show the config: every field, its value, default and doc")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="every field with its current value, its default and its doc")
    add_config_args(show)
    show.add_argument("--changed", action="store_true", help="only the fields that differ from the defaults")

    exp = sub.add_parser("export", help="a run's model for tools without fedlm: merged HF model or a client's adapter")
    exp.add_argument("run_dir", help="run directory")
    what = exp.add_mutually_exclusive_group(required=True)
    what.add_argument("--merged", metavar="OUT", help="write the base with the adapter merged in (an HF model folder)")
    what.add_argument("--client", nargs=2, metavar=("ID", "OUT"),
                      help="write client ID's personal adapter to folder OUT (runs with personal.method)")


def run_tool(args: argparse.Namespace, console: Console) -> int:
    """Run ``init``, ``config`` or ``export``."""
    if args.command == "init":
        from fedlm.commands.init import describe_examples, init_example

        if args.name is None:
            for name, first in describe_examples().items():
                print(f"{name:<12} {first}")
            print("\ncopy one with: fedlm init NAME [DIR]   (or run it as is: fedlm run -c NAME)")
            return 0
        for path in init_example(args.name, args.dir, force=args.force):
            print(path)
        return 0
    if args.command == "config":
        from fedlm.commands.config_show import field_rows, render
        from fedlm.config.loader import load_config

        print(render(field_rows(load_config(args.config, args.overrides)), changed_only=args.changed))
        return 0
    from fedlm.commands.export import export_client, export_merged

    if args.merged:
        print(export_merged(args.run_dir, args.merged, console=console))
        return 0
    client, out = args.client
    print(export_client(args.run_dir, client, out, console=console))
    return 0


__all__ = ["add_tool_parsers", "run_tool"]
