"""The stage plan of a recipe with estimated generations and tokens, for `prefmill run --dry-run`.
Writes nothing. Estimates are upper bounds on tokens (every sample assumed to reach max_tokens).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.recipe import Recipe

_JUDGE_KINDS = {"judge", "pairwise_judge", "critique"}


@dataclass(frozen=True)
class PlannedStage:
    round: int
    stage: str
    output: str
    generations: int
    max_new_tokens: int
    note: str = ""


def count_prompts(recipe: Recipe) -> int:
    """Seed rows (cheap: counts lines / parquet metadata) plus the topic tree's quota."""
    p, n = recipe.prompts, 0
    if p.seeds:
        path = Path(p.seeds.path)
        fmt = p.seeds.format
        if fmt == "jsonl" or (fmt == "auto" and path.suffix in (".jsonl", ".json")):
            n = sum(1 for line in path.open() if line.strip())
        elif fmt == "parquet" or (fmt == "auto" and path.suffix == ".parquet"):
            import pyarrow.parquet as pq
            n = pq.ParquetFile(path).metadata.num_rows
        else:
            from datasets import load_from_disk  # memory-mapped: counting rows reads no data
            ds = load_from_disk(str(path))
            n = len(ds[p.seeds.hf_split]) if hasattr(ds, "keys") else len(ds)
        if p.seeds.limit:
            n = min(n, p.seeds.limit)
    if p.topics:
        leaves = _topic_leaves(recipe)
        n += leaves * len(p.write.task_types) * p.write.n_prompts
    return n


def _topic_leaves(recipe: Recipe) -> int:
    t = recipe.prompts.topics
    n_macro = len(t.macro_topics) or t.n_macro
    return n_macro * max(t.n_subtopics, 1)


def table_name(recipe: Recipe, what: str, round_: int | None = None) -> str:
    return f"{recipe.name}.{what}" if round_ is None else f"{recipe.name}.r{round_}.{what}"


def plan(recipe: Recipe) -> list[PlannedStage]:
    n_prompts = count_prompts(recipe)
    held = int(round(n_prompts * recipe.prompts.heldout_fraction))
    train = n_prompts - held
    if recipe.eval.max_prompts:
        held = min(held, recipe.eval.max_prompts)
    s, out = recipe.sampling, []
    p = recipe.prompts
    if p.topics:
        t = p.topics
        n_macro = len(t.macro_topics) or t.n_macro
        gens = (0 if t.macro_topics else t.attempts) + (n_macro if t.n_subtopics else 0)
        out.append(PlannedStage(0, "topics", table_name(recipe, "topics"), gens, t.max_tokens, f"{n_macro} macro topics"))
        out.append(PlannedStage(0, "write prompts", table_name(recipe, "prompts.written"),
                                _topic_leaves(recipe) * len(p.write.task_types), p.write.max_tokens))
    if p.seeds:
        out.append(PlannedStage(0, "import seeds", table_name(recipe, "prompts.seeds"), 0, 0, str(p.seeds.path)))
    for name in ("refine", "evolve"):
        if getattr(p, name):
            out.append(PlannedStage(0, name, table_name(recipe, f"prompts.{name}"), n_prompts, getattr(p, name).max_tokens))
    out.append(PlannedStage(0, "constraints+dedup", table_name(recipe, "prompts"), 0, 0, f"~{n_prompts} prompts"))
    out.append(PlannedStage(0, "eval base", table_name(recipe, "evals"), held, recipe.eval.max_tokens, f"{held} held-out prompts"))
    for k in range(1, max(recipe.rounds.count, 1) + 1):
        out.append(PlannedStage(k, f"sample ({s.mode})", table_name(recipe, "samples", k), train * s.n, s.max_tokens,
                                f"{train} prompts x n={s.n}"))
        for sc in recipe.scoring:
            judged = sc.kind in _JUDGE_KINDS
            k_judge = int(getattr(sc, "k", 1)) * (2 if sc.kind == "pairwise_judge" else 1)
            out.append(PlannedStage(k, f"score ({sc.kind})", table_name(recipe, "scores", k),
                                    train * s.n * k_judge if judged else 0, getattr(sc, "max_tokens", 0) if judged else 0))
        out.append(PlannedStage(k, f"filter+pairs ({recipe.pairs.strategy})", table_name(recipe, "pairs", k), 0, 0))
        if recipe.rounds.count == 0:
            break
        t = recipe.training
        out.append(PlannedStage(k, f"train ({t.trainer}{'/' + t.loss if t.trainer == 'dpo' else ''})", "models", 0, 0,
                                f"lr={t.learning_rate} epochs={t.epochs}"))
        out.append(PlannedStage(k, "eval", table_name(recipe, "evals"), held, recipe.eval.max_tokens))
    return out


def format_plan(recipe: Recipe, stages: list[PlannedStage]) -> str:
    rows = [f"recipe {recipe.name}: {len(stages)} stages, policy {recipe.policy.model} on {recipe.policy.kind}",
            f"{'round':>5}  {'stage':<34} {'output':<34} {'generations':>11} {'max tokens':>12}  note"]
    tot_g = tot_t = 0
    for st in stages:
        toks = st.generations * st.max_new_tokens
        tot_g, tot_t = tot_g + st.generations, tot_t + toks
        rows.append(f"{st.round:>5}  {st.stage:<34} {st.output:<34} {st.generations:>11,} {toks:>12,}  {st.note}")
    rows.append(f"{'total':>5}  {'':<34} {'':<34} {tot_g:>11,} {tot_t:>12,}  (tokens are an upper bound)")
    b = recipe.budget
    if b.max_generations and tot_g > b.max_generations or b.max_tokens and tot_t > b.max_tokens:
        rows.append(f"budget: the run will stop cleanly at max_generations={b.max_generations}, max_tokens={b.max_tokens}")
    return "\n".join(rows)


def plan_json(stages: list[PlannedStage]) -> list[dict]:
    return [asdict(s) for s in stages]
