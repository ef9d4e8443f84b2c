"""The recipe flow: prompts → (eval base) → for each round: sample → score → filter + pairs →
train → eval → … → export → report. Rounds sample with the policy the previous round trained.

    prefmill run recipes/quickstart.yaml        # or, from Python:
    run_recipe(load_recipe("recipes/quickstart.yaml"), store="./store")

Interrupting and rerunning resumes from the store: completed stage versions are reused by
fingerprint, an interrupted stage skips every committed key.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.budget import Budget, BudgetExhausted
from flows.engines import close_pool
from flows.recipe import Recipe, load_recipe
from flows.stage_tasks import (check_scorer_task, eval_task, pairs_task, prompts_task, sample_task, score_task,
                               train_task)
from pipelines.stage import lineage_of
from pipelines.store import Store, default_root

log = logging.getLogger("prefmill.loop")


class NothingToTrain(RuntimeError):
    """A round's pairs table is empty: the loop stops cleanly (earlier rounds are kept)."""


@dataclass
class RunResult:
    recipe: str
    store: str
    ok: bool = True
    stopped: str | None = None
    prompts: str | None = None
    pairs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    evals: str | None = None
    export: str | None = None
    report: str | None = None
    wall_s: float = 0.0
    eval_table: str = ""

    def summary(self) -> str:
        lines = [f"recipe {self.recipe}: {'stopped: ' + self.stopped if self.stopped else 'done'} in {self.wall_s:.0f} s",
                 f"store: {self.store}"]
        if self.eval_table:
            lines += ["", self.eval_table, ""]
        for label, value in [("prompts", self.prompts), ("pairs", ", ".join(self.pairs)),
                             ("models", ", ".join(self.models)), ("evals", self.evals), ("export", self.export)]:
            if value:
                lines.append(f"{label}: {value}")
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def _initial_policy(recipe: Recipe) -> str:
    if recipe.policy.kind == "openai":
        return recipe.policy.model
    from generators.models.registry import resolve_model
    return str(resolve_model(recipe.policy.model))


def _reference(recipe: Recipe, *, initial: str, previous: str, round_: int, store_root: str, plan) -> str | None:
    from trainers.reference import next_reference

    if recipe.training.trainer != "dpo" or getattr(recipe.training, "reference_free", False):
        return None
    policy = plan.reference_from or recipe.rounds.reference
    out = Path(store_root) / "models" / recipe.name / f"r{round_}-reference"
    return str(next_reference(policy, initial=initial, previous=previous, alpha=recipe.rounds.mix_alpha, output_dir=out))


def _round(recipe: Recipe, root: str, run_id: str, *, k: int, prompts: str, policy: str, initial: str,
           budget: Budget, result: RunResult) -> str:
    """One round; returns the policy for the next round (the trained model, or `policy` if count == 0)."""
    from trainers.reference import training_data

    sampled = sample_task(recipe, root, run_id, prompts=prompts, policy_path=policy, round_=k, budget=budget)
    if "stopped" in sampled:
        raise BudgetExhausted(sampled["stopped"])
    samples = sampled["ref"]
    scores, judgments = [], None
    for i, sc in enumerate(recipe.scoring):
        ref = score_task(recipe, root, run_id, samples=samples, prompts=prompts, scorer_index=i, round_=k,
                         policy_path=policy)
        if sc.kind == "pairwise_judge":
            judgments = ref
        else:
            scores.append(ref)
    pairs = pairs_task(recipe, root, samples=samples, prompts=prompts, scores=scores, judgments=judgments, round_=k)
    result.pairs.append(pairs)
    if recipe.rounds.count == 0:
        return policy
    store = Store(root)
    if store.count(pairs) == 0:
        drops = lineage_of(store, store.ref(pairs).name).tail(1)["drops"].to_list()
        raise NothingToTrain(f"round {k}: no training rows survived scoring and filtering (drops: "
                             f"{drops[0] if drops else '{}'}); see `prefmill datasets show quarantine`")
    plan = training_data(result.pairs, policy=recipe.rounds.data, round=k - 1)
    reference = _reference(recipe, initial=initial, previous=policy, round_=k, store_root=root, plan=plan)
    model = train_task(recipe, root, run_id, data=[str(d) for d in plan.data], policy_path=policy,
                       reference=reference, round_=k)
    result.models.append(model)
    result.evals = eval_task(recipe, root, run_id, prompts=prompts, policy_path=model, round_=k, previous=policy,
                             reference=reference or initial)
    return model


def execute(recipe: Recipe, root: str, run_id: str) -> RunResult:
    t0 = time.perf_counter()
    Store(root)   # creates the store folder on a first run
    result = RunResult(recipe=recipe.name, store=root)
    budget = Budget(recipe.budget.max_generations, recipe.budget.max_tokens)
    try:
        initial = _initial_policy(recipe)
        if recipe.rounds.min_scorer_accuracy is not None:
            check_scorer_task(recipe, root)
        result.prompts = prompts_task(recipe, root, run_id, initial)
        if recipe.rounds.count > 0:
            result.evals = eval_task(recipe, root, run_id, prompts=result.prompts, policy_path=initial, round_=0,
                                     previous=None, reference=None)
        policy = initial
        for k in range(1, max(recipe.rounds.count, 1) + 1):
            policy = _round(recipe, root, run_id, k=k, prompts=result.prompts, policy=policy, initial=initial,
                            budget=budget, result=result)
    except (BudgetExhausted, NothingToTrain) as e:
        result.stopped = str(e)
    finally:
        close_pool(run_id)
    _finish(recipe, root, result)
    result.wall_s = time.perf_counter() - t0
    return result


def _finish(recipe: Recipe, root: str, result: RunResult) -> None:
    store = Store(root)
    if result.evals:
        from pipelines.evals import format_eval_table
        result.eval_table = format_eval_table(store.read(result.evals))
    if recipe.export and result.pairs:
        from flows.export import export_dataset
        result.export = str(export_dataset(store, result.pairs[-1], fmt=recipe.export.format, out=recipe.export.out,
                                           split=recipe.export.split, overwrite=True))
    from flows.report import write_report
    result.report = str(write_report(store, out=recipe.report.out, recipe=recipe.name))


@flow(name="prefmill-recipe", log_prints=False)
def recipe_flow(recipe_path: str, store: str | None = None, overrides: list[str] | None = None) -> dict:
    """The whole recipe as one Prefect flow (what `prefmill run` and `prefmill serve` run)."""
    recipe = load_recipe(recipe_path, overrides=overrides)
    root = str(store or default_root())
    preflight(recipe, root)
    result = execute(recipe, root, str(flow_run.id or "local"))
    get_run_logger().info(result.summary())
    return {"ok": result.ok, "stopped": result.stopped, "evals": result.evals, "report": result.report,
            "pairs": result.pairs, "models": result.models}


def preflight(recipe: Recipe, root: str) -> None:
    """Everything that can be checked before a stage writes: the store path, seed files and
    their columns, model folders, endpoints. Raises the one-line error types the CLI prints."""
    Store(root)
    if recipe.prompts.seeds:
        from pipelines.seeds import check_seeds
        check_seeds(recipe.prompts.stage("seeds"))
    from generators.backends.factory import make_backend
    from generators.models.registry import resolve_model

    judges = [] if recipe.rounds.self_rewarding else [sc.backend for sc in recipe.scoring if hasattr(sc, "backend")]
    backends = [recipe.policy, *judges]   # self-rewarding: the policy is the judge
    for cfg in backends:
        if cfg.kind == "openai":
            probe = make_backend(cfg)     # load() contacts the endpoint: unreachable -> BackendError
            probe.load()
            probe.close()
        else:
            resolve_model(cfg.model)
    for sc in recipe.scoring:
        if sc.kind in ("rm", "multi_rm"):
            resolve_model(sc.model)
    for path in (recipe.eval.reward_model, recipe.eval.judge):
        if path:
            resolve_model(path)


def run_recipe(recipe: Recipe, *, store: str | None, recipe_path: str, overrides: list[str] | None = None) -> RunResult:
    """Run a validated recipe as a Prefect flow in this process and return its result."""
    root = str(store or default_root())
    preflight(recipe, root)
    holder: dict[str, RunResult] = {}

    @flow(name=f"prefmill-{recipe.name}", log_prints=False)
    def _run() -> dict:
        holder["result"] = execute(recipe, root, str(flow_run.id or "local"))
        return {"ok": holder["result"].ok}

    _run()
    return holder["result"]
