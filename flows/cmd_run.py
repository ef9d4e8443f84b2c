"""`prefmill run RECIPE [--store DIR] [--set key.path=value ...] [--dry-run]`.

Runs a recipe as a Prefect flow (ephemeral local API unless PREFECT_API_URL points at a server).
An interrupted run resumes from the store on the next invocation: every committed batch is kept.
"""
from __future__ import annotations

import argparse
import json

from flows.recipe import load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a recipe (the whole iterative loop)", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument("--store", default=None, help="store folder (default: $PREFMILL_STORE or ./store)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, e.g. --set sampling.n=8 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the stage plan with estimated generations/tokens; write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    if args.dry_run:
        from flows.plan import format_plan, plan, plan_json

        stages = plan(recipe)
        print(json.dumps(plan_json(stages), indent=2) if args.json else format_plan(recipe, stages))
        return 0
    from flows.loop import run_recipe

    result = run_recipe(recipe, store=args.store, recipe_path=args.recipe)
    print(result.summary())
    return 0 if result.ok else 1

