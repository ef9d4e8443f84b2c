"""The recipe flow: the recipe's one plan (flows/plan.py) executed stage by stage, each stage a
Prefect task named by its plan id: prompts -> (eval base) -> for each round: sample -> score ->
filter + pairs -> train -> eval -> ... -> export -> report. Rounds sample with the policy the
previous round trained.

    prefmill run recipes/quickstart.yaml        # or, from Python:
    run_recipe(load_recipe("recipes/quickstart.yaml"), store="./store", recipe_path=...)

Interrupting and rerunning resumes from the store: completed stage versions are reused by
fingerprint, an interrupted stage skips every committed key. A budget stop is clean (exit 0,
everything committed); a round whose pairs are empty fails the run (exit 1, the flow run is
not Completed) after writing the report, with the drops by reason.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.budget import Budget, BudgetExhausted
from flows.engines import close_pool
from flows.plan import Plan, StageSpec, compile_plan
from flows.recipe import Recipe, load_recipe
from flows.recipe_input import RecipeError
from flows.stage_tasks import (RETRIED, RUNNERS, NothingToTrain, RunContext, followers_of, start_followers,
                               stop_followers, table_ref)
from flows.tasks import _is_transient, publish
from pipelines.objectstore import StoreError
from pipelines.store import Store, check_store_path, default_root

log = logging.getLogger("prefmill.loop")


class RunFailed(RuntimeError):
    """The run produced nothing to train on or export (the message names the drops)."""


@dataclass
class RunResult:
    recipe: str
    store: str
    ok: bool = True
    stopped: str | None = None
    failed: str | None = None
    results: dict[str, str] = field(default_factory=dict)
    plan: Plan | None = None
    wall_s: float = 0.0
    eval_table: str = ""

    def of_kind(self, kind: str) -> list[str]:
        """Results of the plan's stages of one runner kind, in plan order."""
        specs = self.plan.stages if self.plan else []
        return [self.results[s.id] for s in specs if s.id in self.results and kind == s.kind]

    @property
    def pairs(self) -> list[str]:
        return self.of_kind("pairs")

    @property
    def models(self) -> list[str]:
        return self.of_kind("train")

    @property
    def evals(self) -> str | None:
        got = self.of_kind("eval")
        return got[-1] if got else None

    @property
    def report(self) -> str | None:
        got = self.of_kind("report")
        return got[-1] if got else None

    @property
    def export(self) -> str | None:
        got = self.of_kind("export")
        return got[-1] if got else None

    def summary(self) -> str:
        status = "failed: " + self.failed if self.failed else "stopped: " + self.stopped if self.stopped else "done"
        lines = [f"recipe {self.recipe}: {status} in {self.wall_s:.0f} s", f"store: {self.store}"]
        if self.eval_table:
            lines += ["", self.eval_table, ""]
        prompts = self.results.get("prompts")
        for label, value in [("prompts", prompts), ("pairs", ", ".join(self.pairs)), ("models", ", ".join(self.models)),
                             ("evals", self.evals), ("export", self.export)]:
            if value:
                lines.append(f"{label}: {value}")
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def _initial_policy(recipe: Recipe) -> str:
    folder = recipe.policy.model_folder()
    return str(folder) if folder is not None else recipe.policy.model


def _absolute(root) -> str:
    """The store root as every process sees it: a relative folder is resolved here, since shards
    on an existing cluster start in their own working directories."""
    from pipelines.store import is_uri

    text = str(root)
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def run_spec(spec: StageSpec, ctx: RunContext) -> str:
    """One plan stage as a Prefect task named by its id; its stats are published after."""
    retried = spec.kind in RETRIED
    runner = task(name=spec.id, cache_policy=NONE, persist_result=False, retries=2 if retried else 0,
                  retry_delay_seconds=exponential_backoff(backoff_factor=5) if retried else 0,
                  retry_condition_fn=_is_transient if retried else None)(RUNNERS[spec.kind])
    scale = ctx.recipe.scale
    if scale.shards_stage(spec.kind):
        from dataclasses import replace

        from flows.scale import run_stage_shards

        run_stage_shards(ctx, spec, scale)
        out = runner(replace(ctx, identity_only=True), spec)   # nothing left: the completion record
    else:
        out = runner(ctx, spec)
    ref = table_ref(out)
    if ref is not None:
        publish(ctx.store, ref, label=spec.id)
    return out


def execute(recipe: Recipe, root: str, run_id: str) -> RunResult:
    t0 = time.perf_counter()
    Store(root)   # creates the store folder on a first run
    plan = compile_plan(recipe)
    result = RunResult(recipe=recipe.name, store=root, plan=plan)
    ctx = RunContext(recipe=recipe, root=root, run_id=run_id, initial=_initial_policy(recipe),
                     budget=Budget(recipe.budget.max_generations, recipe.budget.max_tokens), results=result.results)
    try:
        if recipe.rounds.min_scorer_accuracy is not None:
            _check_scorer(recipe, root)
        for spec in plan.stages:
            if (result.stopped or result.failed) and not spec.final:
                continue
            if result.failed and spec.needs_success:
                continue
            if (result.stopped or result.failed) and not ctx.has_inputs(spec):
                continue
            followers = start_followers(ctx, spec, followers_of(ctx, spec, plan.stages))
            try:
                result.results[spec.id] = run_spec(spec, ctx)
            except BudgetExhausted as e:
                get_run_logger().warning(str(e))
                result.stopped = str(e)
            except NothingToTrain as e:
                result.failed, result.ok = str(e), False
            finally:
                stop_followers(ctx, followers)
            if not spec.final and (result.stopped or result.failed):
                close_pool(run_id)
    finally:
        close_pool(run_id)
    if result.evals:
        from pipelines.evals import format_eval_table

        store = Store(root)
        result.eval_table = format_eval_table(store.read(store.ref(result.evals).name))
    result.wall_s = time.perf_counter() - t0
    return result


def _check_scorer(recipe: Recipe, root: str) -> dict:
    from pipelines.scorer_check import check_scorer, require_accuracy

    result = check_scorer(Store(root), recipe.scoring[0], recipe.rounds.labelled_pairs)
    require_accuracy(result, recipe.rounds.min_scorer_accuracy)
    return result


@flow(name="prefmill-recipe", log_prints=False)
def recipe_flow(recipe_path: str, store: str | None = None, overrides: list[str] | None = None,
                limit: int | None = None) -> dict:
    """The whole recipe as one Prefect flow (what `prefmill serve` runs). A failed run raises, so
    the flow run is Failed, not Completed."""
    recipe = load_recipe(recipe_path, overrides=overrides, limit=limit)
    root = _absolute(store or default_root())
    preflight(recipe, root)
    result = execute(recipe, root, str(flow_run.id or "local"))
    get_run_logger().info(result.summary())
    if result.failed:
        raise RunFailed(result.failed)
    return {"ok": result.ok, "stopped": result.stopped, "evals": result.evals, "report": result.report,
            "pairs": result.pairs, "models": result.models}


class _QuietExpectedEnds(logging.Filter):
    """Prefect logs a task or flow run that raised, with its traceback, at ERROR. A run that ends
    because no pairs survived (NothingToTrain, then RunFailed) is an outcome prefmill reports
    itself: the summary, the drops and one `prefmill: error:` line. Its records are dropped here;
    the flow run's Failed state on the Prefect server still carries the reason."""

    NAMES = ("NothingToTrain", "RunFailed")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return type(exc).__name__ not in self.NAMES
        msg = record.getMessage()
        return not any(f"{n}(" in msg or f"{n}:" in msg for n in self.NAMES)


class _NoRunTracesOnConsole(logging.Filter):
    """On the console, Prefect's record of a task or flow run that raised keeps its one line and
    loses its traceback (~100 lines of Prefect's engine frames above prefmill's own `prefmill:
    error:` line, which names the crash log holding the whole trace). Runs on the console handler,
    after the run loggers' API handler has sent the record with its traceback to the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")):
            record.exc_info = record.exc_text = None
        return True


def quiet_expected_ends() -> None:
    """Install `_QuietExpectedEnds` on Prefect's run loggers and `_NoRunTracesOnConsole` on the
    console handlers (idempotent; `prefmill run` without -v)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _QuietExpectedEnds) for f in lg.filters):
            lg.addFilter(_QuietExpectedEnds())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
                isinstance(f, _NoRunTracesOnConsole) for f in handler.filters):
            handler.addFilter(_NoRunTracesOnConsole())


def check_inputs(recipe: Recipe, *, remote: bool = True) -> None:
    """The recipe's inputs, checked without writing anything: seed files and their columns, a test
    split that the evals need and the seeds would leave empty, model folders (present and
    complete), and with `remote` the endpoints and the cluster. `prefmill run --dry-run` checks the
    local ones. Raises the one-line error types the CLI prints."""
    if recipe.prompts.seeds:
        from pipelines.seeds import check_seeds, seed_split_counts

        seeds = recipe.prompts.stage("seeds")
        df = check_seeds(seeds)
        split = recipe.eval.split
        if recipe.rounds.count and recipe.prompts.topics is None and split in ("heldout", "validation"):
            counts = seed_split_counts(seeds, df)        # evals read this split of the prompts
            if not counts.get(split):
                key = f"prompts.{split}_fraction"
                value = getattr(recipe.prompts, f"{split}_fraction")
                raise RecipeError(
                    f"{key}={value:g} puts none of the {sum(counts.values())} seed prompts in the {split} split "
                    f"that each round's eval reads (eval.split); raise {key} or add seed prompts "
                    "(rounds.count: 0 makes data without evals)")
    from generators.backends.factory import make_backend
    from generators.models.registry import check_model_folder, resolve_model

    judges = [] if recipe.rounds.self_rewarding else [sc.backend_config() for sc in recipe.scoring if sc.uses_backend]
    backends = [recipe.policy, *judges]   # self-rewarding: the policy is the judge
    if recipe.prompts.dialogue is not None and recipe.prompts.dialogue.user_model is not None:
        backends.append(recipe.prompts.dialogue.user_model)
    for cfg in backends:
        if not cfg.remote:
            folder = cfg.model_folder(convert=remote)    # a dry run does not convert the built-in model
            if folder is not None:
                check_model_folder(folder)
        elif remote:
            probe = make_backend(cfg)     # load() contacts the endpoint: unreachable -> BackendError
            probe.load()
            probe.close()
    for sc in recipe.scoring:
        for folder in sc.model_folders():
            check_model_folder(resolve_model(folder))
    if remote:
        from flows.scale import check_cluster

        check_cluster(recipe.scale)


def preflight(recipe: Recipe, root: str) -> None:
    """Everything that can be checked before a stage writes (`check_inputs`), then the store: a
    folder is created only when every input is good, and it must be writable."""
    check_store_path(root)
    check_inputs(recipe)
    store = Store(root)
    if isinstance(store.root, Path):
        try:
            with tempfile.NamedTemporaryFile(dir=store.root / "tables", prefix=".prefmill-write-probe-"):
                pass
        except OSError as e:
            raise StoreError(f"store folder {str(store.root)!r} is not writable ({e.strerror or e}); fix its "
                             "permissions or pass --store DIR pointing at a writable folder") from None


def run_recipe(recipe: Recipe, *, store: str | None, recipe_path: str = "", overrides: list[str] | None = None,
               api_ready: Callable[[], None] | None = None) -> RunResult:
    """Run a validated recipe as a Prefect flow in this process and return its result; a failed
    run (nothing to train on) raises RunFailed after the flow run is marked Failed. `api_ready`
    waits for a Prefect API started ahead of time (flows/cmd_run.py)."""
    root = _absolute(store or default_root())
    preflight(recipe, root)
    if api_ready is not None:
        api_ready()
    holder: dict[str, RunResult] = {}

    @flow(name=f"prefmill-{recipe.name}", log_prints=False)
    def _run() -> dict:
        holder["result"] = execute(recipe, root, str(flow_run.id or "local"))
        if holder["result"].failed:
            raise RunFailed(holder["result"].failed)
        return {"ok": holder["result"].ok}

    try:
        _run()
    except RunFailed:
        if "result" not in holder:
            raise
    return holder["result"]
