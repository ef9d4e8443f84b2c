"""The stage tasks of a recipe run: prompts, sample, score, pairs, train, eval. Each reads pinned
versions named by its arguments, runs one pipelines/trainers stage and returns `table@version`
(or a model path). Loaded engines come from the run's EnginePool (flows/engines.py).
"""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from flows.budget import Budget, BudgetExhausted
from flows.engines import pool_for
from flows.plan import table_name
from flows.progress import stage_progress
from flows.recipe import Recipe
from flows.tasks import publish, stage_task
from generators.backends.factory import BackendConfig
from pipelines.store import Store


def _store(root: str) -> Store:
    return Store(root)


def policy_config(recipe: Recipe, model_path: str) -> BackendConfig:
    """The recipe's engine settings for a given policy folder (round k's model)."""
    if recipe.policy.kind == "openai":
        return recipe.policy
    return recipe.policy.model_copy(update={"model": str(model_path)})


@stage_task("prompts")
def prompts_task(recipe: Recipe, store_root: str, run_id: str, policy_path: str) -> str:
    """Seeds and/or topic tree → written prompts → refine → evolve → constraints → dedup; each step
    a stage with its own table (`<recipe>.prompts.<step>`) and lineage; returns the final table."""
    from pipelines import prompts as gen
    from pipelines import seeds
    from pipelines.union import union_stage

    store, p = _store(store_root), recipe.prompts
    name = lambda step: table_name(recipe, f"prompts.{step}")  # noqa: E731
    sources = []
    if p.seeds:
        sources.append(seeds.import_stage(store, p.stage("seeds"), output=name("seeds")))
        publish(store, sources[-1], label="import seeds")
    backend = None
    if p.topics or p.refine or p.evolve:
        backend = pool_for(run_id).get(policy_config(recipe, policy_path))
    if p.topics:
        topics = gen.topics_stage(store, backend, p.topics, output=table_name(recipe, "topics"))
        publish(store, topics, label="topics")
        written = gen.write_stage(store, backend, p.stage("write"), topics_ref=topics, output=name("written"))
        publish(store, written, label="write prompts")
        if p.refine:
            written = gen.rewrite_stage(store, backend, p.stage("refine"), prompts=written, output=name("refined"))
            publish(store, written, label="refine")
        sources.append(written)
    current = sources[0] if len(sources) == 1 else union_stage(store, sources, output=name("union"))
    if p.evolve:
        current = gen.rewrite_stage(store, backend, p.stage("evolve").model_copy(update={"keep_original": True}),
                                    prompts=current, output=name("evolved"))
        publish(store, current, label="evolve")
    if p.constraints:
        current = seeds.constraints_stage(store, p.stage("constraints"), prompts=current, output=name("constrained"))
        publish(store, current, label="constraints")
    final = seeds.dedup_stage(store, p.dedup, prompts=current, output=table_name(recipe, "prompts"))
    publish(store, final, label="prompts")
    return str(final)


@stage_task("sample", retries=2)
def sample_task(recipe: Recipe, store_root: str, run_id: str, *, prompts: str, policy_path: str, round_: int,
                budget: Budget) -> dict:
    """Returns {"ref": table@version} or, when the run budget is reached, {"stopped": reason}
    with every batch committed so far kept (a clean stop, not a task failure)."""
    from pipelines.sampling import sample_stage

    store = _store(store_root)
    out = table_name(recipe, "samples", round_)
    budget.tables.append(out)
    try:
        budget.check(store)
        backend = pool_for(run_id).get(policy_config(recipe, policy_path))
        with stage_progress(f"round {round_}: sample", extra=lambda d, t: budget.check(store)) as cb:
            ref = sample_stage(store, backend, recipe.sampling, prompts=prompts, output=out, progress=cb)
    except BudgetExhausted as e:
        get_run_logger().warning(str(e))
        return {"stopped": str(e)}
    publish(store, ref, label=f"r{round_} sample")
    return {"ref": str(ref)}


@stage_task("score", retries=2)
def score_task(recipe: Recipe, store_root: str, run_id: str, *, samples: str, prompts: str, scorer_index: int,
               round_: int, policy_path: str) -> str:
    from pipelines.scoring import score_samples

    store = _store(store_root)
    cfg = recipe.scoring[scorer_index]
    name = getattr(cfg, "name", None) or cfg.kind
    backend = None
    if recipe.rounds.self_rewarding and cfg.kind in ("judge", "pairwise_judge", "critique"):
        backend = pool_for(run_id).get(policy_config(recipe, policy_path))   # the policy judges itself
    out = table_name(recipe, "judgments" if cfg.kind == "pairwise_judge" else f"scores.{name}", round_)
    with stage_progress(f"round {round_}: score {name}") as cb:
        ref = score_samples(store, samples=samples, prompts=prompts, scorer_cfg=cfg, output=out, progress=cb,
                            backend=backend)
    publish(store, ref, label=f"r{round_} score {name}")
    return str(ref)


@stage_task("pairs")
def pairs_task(recipe: Recipe, store_root: str, *, samples: str, prompts: str, scores: list[str],
               judgments: str | None, round_: int) -> str:
    from pipelines.pairs import build_pairs

    store = _store(store_root)
    ref = build_pairs(store, samples=samples, prompts=prompts, scores=scores, judgments=judgments,
                      cfg=recipe.pairs, output=table_name(recipe, "pairs", round_))
    publish(store, ref, label=f"r{round_} pairs")
    return str(ref)


@stage_task("check-scorer")
def check_scorer_task(recipe: Recipe, store_root: str) -> dict:
    from pipelines.scorer_check import check_scorer, require_accuracy

    store = _store(store_root)
    result = check_scorer(store, recipe.scoring[0], recipe.rounds.labelled_pairs)
    require_accuracy(result, recipe.rounds.min_scorer_accuracy)
    return result


@stage_task("train")
def train_task(recipe: Recipe, store_root: str, run_id: str, *, data: list[str], policy_path: str,
               reference: str | None, round_: int) -> str:
    store = _store(store_root)
    pool_for(run_id).close()   # free the engine's memory and threads for training
    out_dir = Path(store_root) / "models" / recipe.name / f"r{round_}"
    cfg = recipe.training
    name = f"{recipe.name}-r{round_}"
    if cfg.trainer == "dpo":
        from trainers.dpo import train_dpo
        rec = train_dpo(store, data=data, policy=policy_path, config=cfg, output_dir=out_dir, name=name,
                        round=round_, reference=reference)
    elif cfg.trainer == "rft":
        from trainers.rft import train_rft
        rec = train_rft(store, data=data, policy=policy_path, config=cfg, output_dir=out_dir, name=name, round=round_)
    else:
        from trainers.reward import train_reward_model
        rec = train_reward_model(store, data=data, policy=policy_path, config=cfg, output_dir=out_dir, name=name,
                                 round=round_)
    get_run_logger().info("round %d trained %s -> %s metrics=%s", round_, cfg.trainer, rec.path, rec.metrics)
    return rec.path


@stage_task("eval")
def eval_task(recipe: Recipe, store_root: str, run_id: str, *, prompts: str, policy_path: str, round_: int,
              previous: str | None, reference: str | None) -> str:
    from pipelines.evals import EvalConfig, run_eval

    store = _store(store_root)
    backend = pool_for(run_id).get(policy_config(recipe, policy_path))
    cfg = EvalConfig.model_validate(recipe.eval.model_dump(exclude={"reward_model", "judge"}))
    kl = None
    if reference and reference != policy_path and recipe.policy.kind != "openai":
        from trainers.kl import make_kl_fn
        kl = make_kl_fn(policy=policy_path, reference=reference)
    reward = None
    if recipe.eval.reward_model:
        from generators.scorers.config import build_scorer, parse_scorer_config
        reward = build_scorer(parse_scorer_config({"kind": "rm", "model": recipe.eval.reward_model}))
    ref = run_eval(store, prompts=prompts, policy=backend, model=policy_path, round=round_, config=cfg,
                   output=table_name(recipe, "evals"), responses_table=table_name(recipe, "eval_responses"),
                   reward=reward, previous_model=previous, kl=kl, reference=reference)
    publish(store, ref, label=f"r{round_} eval")
    return str(ref)
