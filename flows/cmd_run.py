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
import threading

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


class _EarlyAPI:
    """Without PREFECT_API_URL, Prefect starts a temporary local API server when the flow starts
    (seconds to tens of seconds on a loaded machine). Start it now, in a thread, so it comes up
    while the engines and libraries import and the preflight runs; the flow waits for it. The
    server module is imported here, in the calling thread (imports from two threads at once race
    with code that walks sys.modules); the thread only spawns the server and polls its health. A
    failed early start is harmless: the flow starts the server itself. Prefect's start/stop
    notices are silenced (stderr carries prefmill's one-line errors only); a run that fails before
    its flow starts stops the server again."""

    def __init__(self) -> None:
        import logging

        from prefect.server.api import server as api_server
        from prefect.settings import PREFECT_API_URL

        self.thread: threading.Thread | None = None
        if PREFECT_API_URL.value():
            return
        logger = getattr(api_server, "subprocess_server_logger", None)
        if isinstance(logger, logging.Logger):
            logger.setLevel(logging.WARNING)
        self.server = api_server.SubprocessASGIServer()
        self.thread = threading.Thread(target=self._start, name="prefmill-prefect-api", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except Exception:  # noqa: BLE001 - the flow retries the start and reports its own error
            pass

    def ready(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def close(self, failed: bool) -> None:
        """Never leave the start-up thread behind this command; stop the server of a run that
        failed before or in its flow (the next command in this process starts a fresh one)."""
        self.ready()
        if failed and self.thread is not None:
            self.server.stop()


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
    if args.json and not args.dry_run:
        raise RecipeError("--json goes with --dry-run (a run prints its summary); add --dry-run or drop --json")
    scale = [f"scale.{k}={v}" for k, v in (("engine", args.scale), ("workers", args.workers),
                                              ("address", args.cluster)) if v is not None]
    recipe = load_recipe(args.recipe, overrides=[*args.overrides, *scale], limit=_limit(args.limit))
    if args.dry_run:
        from flows.plan import compile_plan, format_plan, plan_json

        plan = compile_plan(recipe)
        print(plan_json(plan) if args.json else format_plan(recipe, plan))
        return 0
    from flows.loop import run_recipe

    api = _EarlyAPI()
    failed = True
    try:
        result = run_recipe(recipe, store=args.store, recipe_path=args.recipe, api_ready=api.ready)
        failed = False
    finally:
        api.close(failed)
    print(result.summary())
    if result.failed:
        print(f"prefmill: error: {result.failed}", file=sys.stderr)
        return 1
    return 0
