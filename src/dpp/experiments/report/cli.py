"""``dpp report RUN_DIR ...``: the command line of the report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .build import DEFAULT_SAMPLES, make_report
from .plotting import MissingPlotDependencyError
from .render import FORMATS

__all__ = ["register_cli"]


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        result = make_report(
            args.runs,
            out=args.out,
            fmt=args.format,
            samples=args.samples,
            dense=args.dense,
            seed=args.seed,
            log=None if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
        )
    except MissingPlotDependencyError as err:
        print(f"dpp report: {err}", file=sys.stderr)
        return 2
    print(f"report written to {result.page}")
    if not args.quiet:
        for path in result.figures:
            print(f"  {path}")
    return 0


def register_cli(sub: Any) -> None:
    """Add ``dpp report`` to the ``dpp`` command line (called by ``cli.build_parser``)."""
    p = sub.add_parser(
        "report",
        help="figures and an HTML/Markdown page for one or more runs",
        description="Write PNG figures (training curves, sparsity, mask metrics, mask images, "
        "accuracy against compression for several runs) and one page that shows them.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of dpp train")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: RUN_DIR/report for one run, reports/<timestamp> "
        "for several)",
    )
    p.add_argument("--format", choices=list(FORMATS), default="html", help="page format")
    p.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"Monte Carlo draws for the inclusion probabilities of the mask images "
        f"(default {DEFAULT_SAMPLES})",
    )
    p.add_argument(
        "--dense",
        metavar="RUN_DIR",
        help="dense reference run (default: any given run whose method is dense)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the page's path")
    p.set_defaults(func=_cmd_report)
