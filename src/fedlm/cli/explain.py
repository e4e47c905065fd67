"""``fedlm explain contribution RUN_DIR`` and ``fedlm explain tokens``: thin wrappers."""

from __future__ import annotations

import argparse
import json


def add_explain_parser(sub) -> None:
    """Add the ``explain`` command and its sub-commands to the ``fedlm`` parser."""
    ex = sub.add_parser("explain", help="who contributed what; what drove an answer")
    ex_sub = ex.add_subparsers(dest="explain_command", required=True)
    con = ex_sub.add_parser("contribution", help="client contributions from a run's stored round updates")
    con.add_argument("run_dir")
    con.add_argument("--method", choices=["gtg", "loo", "exact"], default=None,
                     help="estimator (default: the run's explain.contribution, else gtg)")
    tok = ex_sub.add_parser("tokens", help="token attribution of an answer, base vs fine-tuned, as HTML")
    tok.add_argument("--run", required=True, help="run directory")
    tok.add_argument("--prompt", required=True)
    tok.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/attribution.html)")
    tok.add_argument("--max-new-tokens", type=int, default=8)
    tok.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")


def run_explain(args: argparse.Namespace) -> int:
    """Run ``fedlm explain``; the run directory is checked first (a file or a missing folder is one line)."""
    from fedlm.commands.run_dir import require_run_dir

    if args.explain_command == "contribution":
        from fedlm.commands.explain import explain_run

        print(json.dumps(explain_run(require_run_dir(args.run_dir), method=args.method), indent=2))
        return 0
    from fedlm.commands.explain import explain_tokens

    print(explain_tokens(require_run_dir(args.run), args.prompt, out=args.out, max_new_tokens=args.max_new_tokens,
                         steps=args.steps))
    return 0
