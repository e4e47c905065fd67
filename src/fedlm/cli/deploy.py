"""``fedlm deploy app``, ``local`` and ``worker``: fedlm on Flower's Deployment Engine.

All need the ``fedlm[flower]`` extra (flwr 1.42); the rest of the CLI does not.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from fedlm.errors import FedlmError


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    dep = sub.add_parser("deploy", help="run on Flower's Deployment Engine (needs fedlm[flower])")
    dep_sub = dep.add_subparsers(dest="deploy_command", required=True)
    app = dep_sub.add_parser("app", help="write a Flower app (pyproject.toml) for `flwr run`")
    _config_args(app)
    app.add_argument("--out", required=True, help="app directory to write")
    app.add_argument("--with-data", action="store_true",
                     help="also split config.data into DIR/data (one file per client) for Flower's simulation engine")
    app.add_argument("--run-dir", default="", help="run directory the ServerApp writes (default: runs/<name>-<time>)")
    app.add_argument("--client-node", dest="client_nodes", action="append", default=[], metavar="CLIENT=NODE_ID",
                     help="enrol a client id under the node id `flwr supernode register` printed for its "
                          "node's key; the server refuses any other node claiming it (repeatable)")
    loc = dep_sub.add_parser("local", help="SuperLink + N SuperNodes on loopback with TLS and node authentication")
    _config_args(loc)
    loc.add_argument("--nodes", type=int, required=True, help="SuperNodes to start (one per client)")
    loc.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    loc.add_argument("--resume", metavar="RUN_DIR", help="continue a deployed run from its last checkpoint")
    loc.add_argument("--isolation", choices=("process", "subprocess"), default="process",
                     help="process: one long-lived fedlm worker per SuperNode (default); "
                          "subprocess: Flower's default, a ClientApp process per message")
    work = dep_sub.add_parser("worker", help="serve a SuperNode started with --isolation process "
                                             "(fedlm's ClientApp in one long-lived process)")
    from fedlm.deploy.worker import add_worker_args

    add_worker_args(work)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="experiment YAML (default: the built-in default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=3 (repeatable)")


def _need_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FedlmError("fedlm deploy needs Flower: pip install 'fedlm[flower]'") from None


def run_deploy(args: argparse.Namespace) -> int:
    from fedlm.config.loader import load_config, require_resolved

    _need_flower()
    if args.deploy_command == "worker":
        from fedlm.deploy.worker import run_worker

        return run_worker(args)
    if args.deploy_command == "app":
        from fedlm.deploy.app_writer import write_app
        from fedlm.deploy.local_data import write_client_files

        config = load_config(args.config, args.overrides)
        out = Path(args.out)
        data_dir = ""
        if args.with_data:  # the data is read here: its path must resolve
            write_client_files(require_resolved(config), out / "data")
            data_dir = str((out / "data").resolve())
        write_app(config, out, out_dir=args.run_dir, data_dir=data_dir, client_nodes=_client_nodes(args.client_nodes))
        print(out / "pyproject.toml")
        return 0
    from fedlm.deploy.launcher import LocalFederation
    from fedlm.deploy.processes import Terminated

    if args.resume:
        run_dir = Path(args.resume)
        config = load_config(run_dir / "config.yaml", args.overrides)
    else:
        config = require_resolved(load_config(args.config, args.overrides))
        run_dir = Path(args.out or config.output.dir or f"runs/{config.name}-{datetime.now():%Y%m%d-%H%M%S}")
    work = run_dir.parent / f".{run_dir.name}-deploy"  # the same on --resume: the nodes' state is there
    try:
        with LocalFederation(config, work, run_dir, nodes=args.nodes, resume=bool(args.resume),
                             isolation=args.isolation) as fed:
            summary = fed.run()
    except Terminated as exc:  # every process it started is stopped; resume with --resume
        print(f"fedlm deploy local: {exc}; stopped every process it started. Continue with --resume {run_dir}")
        return 128 + exc.signum
    final = summary["final"]
    print(f"{run_dir}: {summary['rounds_completed']} rounds, held-out perplexity "
          f"{summary['initial']['perplexity']:.3f} -> {final['perplexity']:.3f}")
    return 0


def _client_nodes(pairs: list[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        cid, _, node = pair.rpartition("=")
        if not cid or not node.isdigit():
            raise FedlmError(f"--client-node {pair!r}: expected CLIENT=NODE_ID, e.g. hospital-a=1234567890")
        if cid in out:
            raise FedlmError(f"--client-node names client {cid!r} twice")
        out[cid] = int(node)
    return out


__all__ = ["add_deploy_parser", "run_deploy"]
