"""`prefmill run RECIPE [--store DIR] [--set key.path=value ...] [--limit N] [--dry-run [--json]]`.

Runs a recipe's plan as a Prefect flow (ephemeral local API unless PREFECT_API_URL points at a
server). An interrupted run resumes from the store on the next invocation: every committed batch
is kept. `--limit N` runs the whole recipe on its first N prompts under its own table names
(`NAME-nN.*`), so a quick try never mixes with a full run. Exit codes: 0 done (or a clean budget
stop), 1 the run produced nothing to train on (the drops are printed), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys

from flows.recipe import RecipeError, load_recipe


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        raise RecipeError(f"--limit {text!r}: use a positive whole number of prompts, e.g. --limit 8") from None
    if n < 1:
        raise RecipeError(f"--limit {n}: use a positive number of prompts, e.g. --limit 8")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a recipe (the whole iterative loop)", description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/quickstart.yaml")
    p.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, e.g. --set sampling.n=8 (repeatable)")
    p.add_argument("--limit", default=None, metavar="N",
                   help="run the whole recipe on its first N prompts, under table names NAME-nN.*")
    p.add_argument("--scale", choices=("local", "dask", "ray"), default=None,
                   help="shard the model stages over a Dask or Ray cluster (= --set scale.engine=...)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="local cluster size (= scale.workers)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="existing cluster: tcp://host:8786 (Dask) or auto / ray://host:10001 (Ray) (= scale.address)")
    p.add_argument("--dry-run", action="store_true", help="print the stage plan with estimated generations/tokens; write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ok = False
    try:
        code = _run(args, getattr(args, "local_api", None))   # a temporary Prefect API flows.cli started
        ok = True
        return code
    finally:
        api = getattr(args, "local_api", None)
        if api is not None and not ok:      # a failed run stops its server now; a finished one at exit
            api.close()


def _run(args: argparse.Namespace, api) -> int:
    if args.json and not args.dry_run:
        raise RecipeError("--json goes with --dry-run (a run prints its summary); add --dry-run or drop --json")
    scale = [f"scale.{k}={v}" for k, v in (("engine", args.scale), ("workers", args.workers),
                                              ("address", args.cluster)) if v is not None]
    recipe = load_recipe(args.recipe, overrides=[*args.overrides, *scale], limit=_limit(args.limit))
    if args.dry_run:
        from flows.loop import check_inputs
        from flows.plan import compile_plan, format_plan, plan_json

        check_inputs(recipe, remote=False)     # seeds, test split, model folders; not endpoints or clusters
        plan = compile_plan(recipe)
        print(plan_json(plan) if args.json else format_plan(recipe, plan))
        return 0
    from flows.local_api import LocalAPI, wanted
    from flows.loop import quiet_expected_ends, run_recipe

    if not getattr(args, "verbose", False):
        quiet_expected_ends()

    if api is None and wanted(["run"]):
        api = args.local_api = LocalAPI()
    if api is not None:
        api.adopt(quiet=not getattr(args, "verbose", False))
    result = run_recipe(recipe, store=args.store, recipe_path=args.recipe,
                        api_ready=api.ready if api is not None else None)
    print(result.summary())
    if result.failed:
        print(f"prefmill: error: {result.failed}", file=sys.stderr)
        return 1
    return 0
