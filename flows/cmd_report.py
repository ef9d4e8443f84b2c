"""`prefmill report [--store DIR] --out DIR [--recipe NAME]`: a self-contained HTML and a Markdown
report of a run or the iterative loop, built from the store (flows/report.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.report import write_report


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="write an HTML + Markdown report of the runs in a store",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    p.add_argument("--out", required=True, type=Path, help="report folder (report.html, report.md, figures/)")
    p.add_argument("--recipe", default=None, help="only tables of this recipe (named RECIPE.*)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.store import Store

    path = write_report(Store(args.store, create=False), args.out, recipe=args.recipe, title=args.title)
    print(path)
    return 0
