"""The runners of the plan's stage kinds: each takes the run context and one StageSpec, runs one
pipelines/trainers stage on the pinned versions its inputs completed, and returns the new
`table@version` (or a model folder). flows/loop.py runs each spec as a Prefect task named by
the spec's id. Loaded engines come from the run's EnginePool (flows/engines.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flows.budget import Budget
from flows.engines import pool_for
from flows.plan import StageSpec
from flows.progress import stage_progress
from flows.recipe import Recipe
from generators.backends.base import Backend
from generators.backends.factory import BackendConfig
from pipelines.store import Store, TableRef


class NothingToTrain(RuntimeError):
    """A round's pairs table is empty: the run stops and fails, naming the drops by reason."""


class IdentityBackend:
    """A model's id and revision without its engine: the coordinator's pass after a sharded
    stage needs the stage's identity (its keys and fingerprint), not generations."""

    def __init__(self, cfg: BackendConfig):
        from generators.models.registry import model_revision

        self.model_id, self.revision = cfg.model, model_revision(cfg.model_folder())
        self.path = cfg.model_folder()

    def load(self) -> None:
        return None

    def close(self) -> None:
        return None

    def generate(self, conversations, sampling):
        from generators.backends.base import BackendError

        raise BackendError(f"items of this stage were left unprocessed by its shards ({len(conversations)} "
                           "requests); a shard failed past its retries: see the shard tasks' logs and rerun")


@dataclass
class RunContext:
    recipe: Recipe
    root: str
    run_id: str
    budget: Budget
    initial: str                                  # the initial policy: a model folder, or a served name
    results: dict[str, str] = field(default_factory=dict)   # spec id -> table@version or model folder
    identity_only: bool = False   # the coordinator's pass after a stage's shards: engines are not loaded
    prescored: dict = field(default_factory=dict)   # score spec id -> Usage its ScoreFollower spent

    @property
    def store(self) -> Store:
        return Store(self.root)

    def input(self, spec: StageSpec, role: str) -> str:
        return self.resolve(spec.inputs[role])

    def has_inputs(self, spec: StageSpec) -> bool:
        """Whether every input of `spec` was produced (a stopped or failed run skips the final
        stages whose inputs it never wrote, e.g. the export of a round that never paired)."""
        try:
            for ref in spec.inputs.values():
                self.resolve(ref)
        except KeyError:
            return False
        return True

    def resolve(self, ref: str) -> str:
        if ref.startswith("policy.r"):
            k = int(ref.removeprefix("policy.r"))
            return self.initial if k == 0 else self.results[f"r{k}.train"]
        return self.results[ref]

    def policy_config(self, path: str) -> BackendConfig:
        """The recipe's engine settings for a policy folder (round k's model)."""
        return self.recipe.policy.for_model(path) if path != self.initial else self.recipe.policy

    def backend(self, cfg: BackendConfig) -> Backend:
        if self.identity_only and cfg.local_model_folder:
            return IdentityBackend(cfg)
        return pool_for(self.run_id).get(cfg)

    def policy_backend(self, spec: StageSpec) -> Backend:
        return self.backend(self.policy_config(self.input(spec, "policy")))


def _progress(spec: StageSpec, extra=None):
    return stage_progress(f"round {spec.round}: {spec.id}" if spec.round else spec.id, extra=extra)


# -- prompts ---------------------------------------------------------------------------------
def run_import_seeds(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.seeds import import_stage

    return str(import_stage(ctx.store, ctx.recipe.prompts.stage("seeds"), output=spec.output))


def run_topics(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.prompts import topics_stage

    backend = ctx.backend(ctx.recipe.policy)
    return str(topics_stage(ctx.store, backend, ctx.recipe.prompts.topics, output=spec.output))


def run_write_prompts(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.prompts import write_stage

    backend = ctx.backend(ctx.recipe.policy)
    return str(write_stage(ctx.store, backend, ctx.recipe.prompts.stage("write"), topics_ref=ctx.input(spec, "topics"),
                           output=spec.output))


def run_union(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.union import union_stage

    return str(union_stage(ctx.store, [ctx.resolve(v) for v in spec.inputs.values()], output=spec.output))


def run_rewrite(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.prompts import rewrite_stage

    backend = ctx.backend(ctx.recipe.policy)
    cfg = ctx.recipe.prompts.stage(spec.params["step"])
    return str(rewrite_stage(ctx.store, backend, cfg, prompts=ctx.input(spec, "prompts"), output=spec.output))


def run_constraints(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.seeds import constraints_stage

    return str(constraints_stage(ctx.store, ctx.recipe.prompts.constraints, prompts=ctx.input(spec, "prompts"),
                                 output=spec.output))


def run_dialogue(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.dialogue import dialogue_stage

    cfg = ctx.recipe.prompts.dialogue
    policy = ctx.policy_backend(spec)
    user = None
    if cfg.user_model is not None:
        from generators.backends.factory import make_backend

        user = make_backend(cfg.user_model)
        user.load()
    try:
        return str(dialogue_stage(ctx.store, policy, user, cfg, prompts=ctx.input(spec, "prompts"), output=spec.output))
    finally:
        if user is not None:
            user.close()


def run_dedup_prompts(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.seeds import dedup_stage

    p = ctx.recipe.prompts
    cfg = p.dedup.model_copy(update={"limit": p.limit, "min_heldout": 1 if ctx.recipe.rounds.count > 0 else 0})
    return str(dedup_stage(ctx.store, cfg, prompts=ctx.input(spec, "prompts"), output=spec.output))


# -- rounds ----------------------------------------------------------------------------------
def run_sample(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.sampling import sample_stage

    store, budget = ctx.store, ctx.budget
    budget.tables.append(spec.output)
    budget.check(store)
    backend = ctx.policy_backend(spec)
    with _progress(spec, extra=lambda d, t: budget.check(store)) as cb:
        return str(sample_stage(store, backend, ctx.recipe.sampling, prompts=ctx.input(spec, "prompts"),
                                output=spec.output, progress=cb))


def run_steps(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.steps import steps_stage

    cfg = ctx.recipe.steps
    backend = None if cfg.method == "rule" else ctx.policy_backend(spec)
    return str(steps_stage(ctx.store, backend, cfg, samples=ctx.input(spec, "samples"),
                           prompts=ctx.input(spec, "prompts"), output=spec.output))


def _scorer_backend(ctx: RunContext, spec: StageSpec, cfg) -> Backend | None:
    """A judge's engine: the policy's under self-rewarding, else its own config, both from the
    run's pool (one engine in memory at a time)."""
    if not cfg.uses_backend:
        return None
    if ctx.recipe.rounds.self_rewarding:
        return ctx.policy_backend(spec)
    return ctx.backend(cfg.backend_config())


def run_score(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.scoring import score_samples

    cfg = ctx.recipe.scorer(spec.params["scorer"])
    members = None
    if cfg.combines:
        members = [ctx.resolve(spec.inputs[f"member.{m}"]) for m in cfg.members]
    with _progress(spec) as cb:
        return str(score_samples(ctx.store, samples=ctx.input(spec, "samples"), prompts=ctx.input(spec, "prompts"),
                                 scorer_cfg=cfg, output=spec.output, progress=cb,
                                 backend=_scorer_backend(ctx, spec, cfg), members=members,
                                 usage=ctx.prescored.pop(spec.id, None)))


def followers_of(ctx: RunContext, spec: StageSpec, stages: list[StageSpec]) -> list[StageSpec]:
    """The score stages that can run beside sampling stage `spec` (recipe `scale.overlap`, default on):
    point scorers on its samples whose LLM is an endpoint (no engine of this machine's), neither
    stage sharded. A local judge would compete with a local policy for the same cores or GPU."""
    scale, recipe = ctx.recipe.scale, ctx.recipe
    if not scale.overlap or ctx.identity_only or scale.shards_stage(spec.kind):
        return []
    out = []
    for s in stages:
        if s.inputs.get("samples") != spec.id or "scorer" not in s.params or scale.shards_stage(s.kind):
            continue
        cfg = recipe.scorer(s.params["scorer"])
        if cfg.pairwise or cfg.combines or not cfg.uses_backend:
            continue
        judge = ctx.policy_config(ctx.input(spec, "policy")) if recipe.rounds.self_rewarding else cfg.backend_config()
        if judge.remote:
            out.append(s)
    return out


def start_followers(ctx: RunContext, sample: StageSpec, specs: list[StageSpec]) -> list:
    """One ScoreFollower per score stage on `sample`'s output (engines are taken from the pool
    here, in the flow's thread); `stop_followers` ends them and keeps their usage for the stages."""
    from pipelines.scoring import ScoreFollower

    out = []
    for s in specs:
        cfg = ctx.recipe.scorer(s.params["scorer"])
        follower = ScoreFollower(ctx.store, samples=sample.output, prompts=ctx.input(s, "prompts"), scorer_cfg=cfg,
                                 output=s.output, backend=_scorer_backend(ctx, s, cfg))
        out.append((s.id, follower.start()))
    return out


def stop_followers(ctx: RunContext, followers: list) -> None:
    for spec_id, f in followers:
        ctx.prescored[spec_id] = f.stop()


def run_pairs(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.pairs import build_pairs
    from pipelines.stage import lineage_of

    store = ctx.store
    scores = {role.removeprefix("scores."): ctx.resolve(ref) for role, ref in spec.inputs.items()
              if role.startswith("scores.")}
    ref = build_pairs(store, samples=ctx.input(spec, "samples"), prompts=ctx.input(spec, "prompts"), scores=scores,
                      judgments=ctx.resolve(spec.inputs["judgments"]) if "judgments" in spec.inputs else None,
                      steps=ctx.resolve(spec.inputs["steps"]) if "steps" in spec.inputs else None,
                      cfg=ctx.recipe.pairs, output=spec.output)
    if store.count(ref) == 0:
        recs = lineage_of(store, ref.name)
        drops = json.loads(recs.tail(1)["drops"][0]) if recs.height else {}
        raise NothingToTrain(f"round {spec.round}: no pairs survived scoring and filtering (drops: "
                             f"{drops or 'none'}); see `prefmill datasets show quarantine`")
    return str(ref)


def run_train(ctx: RunContext, spec: StageSpec) -> str:
    from trainers.reference import next_reference, training_data

    recipe, k = ctx.recipe, spec.round
    policy = ctx.input(spec, "policy")
    pool_for(ctx.run_id).close()     # free the engine's memory and threads for training
    pairs = [ctx.results[f"r{i}.pairs"] for i in range(1, k + 1)]
    plan = training_data(pairs, policy=recipe.rounds.data, round=k - 1)
    reference = None
    store = ctx.store
    if recipe.training.needs_reference:
        which = plan.reference_from or recipe.rounds.reference
        reference = str(next_reference(which, initial=ctx.initial, previous=policy, alpha=recipe.rounds.mix_alpha,
                                       output_dir=store.local_dir("models", recipe.name, f"r{k}-reference")))
    rec = recipe.training.train(store, data=[str(d) for d in plan.data], policy=policy,
                                output_dir=store.local_dir("models", recipe.name, f"r{k}"),
                                name=f"{recipe.name}-r{k}", round=k, reference=reference)
    ctx.results[f"r{k}.reference"] = reference or ""
    return rec.path


def run_eval_responses(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.evals import eval_responses_stage

    backend = ctx.policy_backend(spec)
    with _progress(spec) as cb:
        return str(eval_responses_stage(ctx.store, backend, ctx.recipe.eval, prompts=ctx.input(spec, "prompts"),
                                        output=spec.output, progress=cb))


def run_eval(ctx: RunContext, spec: StageSpec) -> str:
    from pipelines.evals import Deferred
    from pipelines.evals import run_eval as evaluate

    recipe, k = ctx.recipe, spec.round
    e = recipe.eval
    policy = ctx.input(spec, "policy")
    reference = ctx.results.get(f"r{k}.reference") or (ctx.initial if k > 0 else None)
    kl = kl_backend = None
    if k > 0 and reference and reference != policy and recipe.policy.local_model_folder:
        from trainers.kl import make_kl_fn

        kl = make_kl_fn(policy=policy, reference=reference)
        kl_backend = Deferred(lambda: ctx.policy_backend(spec))
    judge = None
    if e.judge and "previous" in spec.inputs:
        cfg = recipe.scorer(e.judge)
        judge = Deferred(lambda: cfg.build(backend=_scorer_backend(ctx, spec, cfg)), id=cfg.build().id)
    relevance = None
    if e.relevance:
        from generators.relevance import RelevanceScorer

        relevance = RelevanceScorer()
        relevance.load()
    try:
        ref = evaluate(ctx.store, prompts=ctx.input(spec, "prompts"), responses=ctx.input(spec, "responses"),
                       model=Path(policy).name if recipe.policy.local_model_folder else policy, round=k, config=e,
                       output=spec.output, scorers={n: recipe.scorer(n) for n in e.scorers}, judge=judge,
                       previous=ctx.resolve(spec.inputs["previous"]) if "previous" in spec.inputs else None,
                       baseline=ctx.results.get("r0.eval_responses"), kl=kl, kl_backend=kl_backend,
                       reference=reference, relevance=relevance,
                       backend_for=lambda c: _scorer_backend(ctx, spec, c))
    finally:
        if relevance is not None:
            relevance.close()
    return str(ref)


# -- finishing -------------------------------------------------------------------------------
def run_export(ctx: RunContext, spec: StageSpec) -> str:
    from flows.export import export_dataset

    e = ctx.recipe.export
    return str(export_dataset(ctx.store, ctx.input(spec, "table"), fmt=e.format, out=e.out, split=e.split,
                              overwrite=True))


def run_report(ctx: RunContext, spec: StageSpec) -> str:
    from flows.report import write_report

    return str(write_report(ctx.store, out=ctx.recipe.report.out, recipe=ctx.recipe.name,
                            figures=ctx.recipe.report.figures))


Runner = Callable[[RunContext, StageSpec], str]
RUNNERS: dict[str, Runner] = {
    "import_seeds": run_import_seeds, "topics": run_topics, "write_prompts": run_write_prompts, "union": run_union,
    "rewrite": run_rewrite, "constraints": run_constraints, "dialogue": run_dialogue,
    "dedup_prompts": run_dedup_prompts, "sample": run_sample, "steps": run_steps, "score": run_score,
    "judge": run_score, "ensemble": run_score, "pairs": run_pairs, "train": run_train,
    "eval_responses": run_eval_responses, "eval": run_eval, "export": run_export, "report": run_report,
}
# Stage kinds that call a model and may hit transient endpoint errors: retried by Prefect.
RETRIED = frozenset({"sample", "score", "judge", "eval_responses", "steps", "dialogue", "topics", "write_prompts",
                     "rewrite"})


def table_ref(text: str) -> TableRef | None:
    name, _, version = text.partition("@")
    return TableRef(name, int(version)) if version.isdigit() else None
