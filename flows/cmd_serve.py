"""`prefmill serve RECIPE --cron "EXPR" [--name NAME] [--store DIR]`: register a scheduled
deployment of the recipe on the Prefect server at PREFECT_API_URL and serve it (flows/serve.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.serve import ServeConfig, serve_recipe


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run a recipe on a cron schedule via a Prefect server",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path, help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument("--cron", required=True, metavar="EXPR", help="cron schedule, e.g. '0 3 * * *' (03:00 daily)")
    p.add_argument("--name", default=None, help="deployment name (default: the recipe's name)")
    p.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="recipe override applied to every scheduled run (repeatable)")
    p.add_argument("--timezone", default="UTC", help="IANA timezone of the cron expression (default UTC)")
    p.add_argument("--limit", type=int, default=1, help="concurrent runs served by this process (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    serve_recipe(ServeConfig(recipe=args.recipe, cron=args.cron, name=args.name, store=args.store,
                             overrides=tuple(args.overrides), timezone=args.timezone, limit=args.limit))
    return 0
