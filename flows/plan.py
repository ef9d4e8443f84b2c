"""The round plan: a recipe compiled into ONE ordered list of stage specs. `prefmill run` executes
it (flows/loop.py), `prefmill run --dry-run` prints it, and Prefect task names and the report's
stage labels come from it, so the dry run and the run cannot disagree about what is written.

    plan = compile_plan(recipe)
    for spec in plan.stages: print(spec.id, spec.kind, spec.output)
    plan.tables()          # every table the run writes (a test checks the run writes exactly these)

A spec names its inputs by the ids of earlier specs (`inputs={"prompts": "prompts", "samples":
"r1.sample"}`); the runner resolves them to the pinned versions those stages completed. Scorers
are named in the recipe; a spec carries the scorer's name, never a run-time id. Estimates of
generations and tokens are upper bounds (every generation assumed to reach max_tokens).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flows.recipe import Recipe

MODELS = "models"      # the output of a train stage: a model folder registered in the models table


@dataclass(frozen=True)
class StageSpec:
    id: str                        # unique in the plan; the Prefect task name
    kind: str                      # which runner executes it (flows/stage_tasks.py RUNNERS)
    round: int                     # 0 = prompts and the base model's eval
    output: str                    # table name, "models", or a folder (export, report)
    inputs: dict[str, str] = field(default_factory=dict)   # role -> id of the spec whose output it reads
    params: dict[str, Any] = field(default_factory=dict)   # small extras (scorer name, rewrite kind ...)
    generations: int = 0
    max_new_tokens: int = 0
    note: str = ""
    writes_table: bool = True
    final: bool = False            # runs even after a clean stop (export, report)
    needs_success: bool = False    # skipped when the run failed (an export of empty pairs)


@dataclass(frozen=True)
class Plan:
    recipe: str
    stages: list[StageSpec]

    def tables(self) -> list[str]:
        return sorted({s.output for s in self.stages if s.writes_table})

    def by_id(self, spec_id: str) -> StageSpec:
        for s in self.stages:
            if s.id == spec_id:
                return s
        raise KeyError(spec_id)


def table_name(recipe: Recipe, what: str, round_: int | None = None) -> str:
    return f"{recipe.name}.{what}" if round_ is None else f"{recipe.name}.r{round_}.{what}"


def count_prompts(recipe: Recipe) -> int:
    """Seed rows (cheap: counts lines / parquet metadata) plus the topic tree's quota, capped by --limit."""
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
        if p.seeds.cap:
            n = min(n, p.seeds.cap)
    if p.topics:
        n += _topic_leaves(recipe) * len(p.write.task_types) * p.write.n_prompts
    if p.limit:
        n = min(n, p.limit)
    return n


def _topic_leaves(recipe: Recipe) -> int:
    t = recipe.prompts.topics
    n_macro = len(t.macro_topics) or t.n_macro
    return n_macro * max(t.n_subtopics, 1)


def _prompt_stages(recipe: Recipe, n_prompts: int) -> list[StageSpec]:
    p, out = recipe.prompts, []
    sources: list[str] = []
    if p.seeds:
        out.append(StageSpec("prompts.seeds", "import_seeds", 0, table_name(recipe, "prompts.seeds"),
                             note=str(p.seeds.path)))
        sources.append("prompts.seeds")
    if p.topics:
        t = p.topics
        n_macro = len(t.macro_topics) or t.n_macro
        gens = (0 if t.macro_topics else t.attempts) + (n_macro if t.n_subtopics else 0)
        out.append(StageSpec("topics", "topics", 0, table_name(recipe, "topics"), generations=gens,
                             max_new_tokens=t.max_tokens, note=f"{n_macro} macro topics"))
        out.append(StageSpec("prompts.written", "write_prompts", 0, table_name(recipe, "prompts.written"),
                             inputs={"topics": "topics"}, generations=_topic_leaves(recipe) * len(p.write.task_types),
                             max_new_tokens=p.write.max_tokens))
        sources.append("prompts.written")
    current = sources[0]
    if len(sources) > 1:
        out.append(StageSpec("prompts.union", "union", 0, table_name(recipe, "prompts.union"),
                             inputs={f"input{i}": s for i, s in enumerate(sources)}))
        current = "prompts.union"
    for step, table in (("refine", "prompts.refined"), ("evolve", "prompts.evolved")):
        sub = getattr(p, step)
        if sub is not None:
            out.append(StageSpec(table, "rewrite", 0, table_name(recipe, table), inputs={"prompts": current},
                                 params={"step": step}, generations=n_prompts, max_new_tokens=sub.max_tokens))
            current = table
    if p.constraints:
        out.append(StageSpec("prompts.constrained", "constraints", 0, table_name(recipe, "prompts.constrained"),
                             inputs={"prompts": current}))
        current = "prompts.constrained"
    if p.dialogue:
        d = p.dialogue
        out.append(StageSpec("prompts.dialogues", "dialogue", 0, table_name(recipe, "prompts.dialogues"),
                             inputs={"prompts": current, "policy": "policy.r0"},
                             generations=n_prompts * (2 * d.turns - 1),
                             max_new_tokens=max(d.user.max_tokens, d.assistant.max_tokens),
                             note=f"{d.turns} user turns per dialogue"))
        current = "prompts.dialogues"
    out.append(StageSpec("prompts", "dedup_prompts", 0, table_name(recipe, "prompts"), inputs={"prompts": current},
                         note=f"~{n_prompts} prompts" + (f" (--limit {p.limit})" if p.limit else "")))
    return out


_ASSUMED_STEPS = 4     # steps per answer assumed by the estimate (the real count is known only after splitting)


def _step_calls(st) -> int:
    """Model generations per answer of a step-labelling stage (estimate)."""
    return 0 if st.method == "rule" else st.k * _ASSUMED_STEPS


def _eval_stages(recipe: Recipe, k: int, held: int, policy: str) -> list[StageSpec]:
    e = recipe.eval
    judge = recipe.scorer(e.judge) if e.judge else None
    return [
        StageSpec(f"r{k}.eval_responses", "eval_responses", k, table_name(recipe, "eval_responses", k),
                  inputs={"prompts": "prompts", "policy": policy}, generations=held, max_new_tokens=e.max_tokens,
                  note=f"{held} held-out prompts"),
        StageSpec(f"r{k}.eval", "eval", k, table_name(recipe, "evals"),
                  inputs={"prompts": "prompts", "responses": f"r{k}.eval_responses", "policy": policy,
                          **({"previous": f"r{k - 1}.eval_responses"} if k > 0 else {})},
                  generations=(held * 2 if judge is not None and k > 0 else 0)
                  + (held if e.kl_temperature is not None and k > 0 else 0),
                  max_new_tokens=max(judge.max_new_tokens() if judge is not None and k > 0 else 0,
                                     e.max_tokens if e.kl_temperature is not None and k > 0 else 0),
                  note="metrics" + (f"; win-rate vs round {k - 1} by {e.judge}" if judge is not None and k > 0 else "")),
    ]


def compile_plan(recipe: Recipe) -> Plan:
    """The one plan of a recipe (see the module docstring)."""
    n_prompts = count_prompts(recipe)
    held = int(round(n_prompts * recipe.prompts.heldout_fraction))
    if recipe.eval.max_prompts:
        held = min(held, recipe.eval.max_prompts)
    train = n_prompts - held - int(round(n_prompts * recipe.prompts.validation_fraction))
    out = _prompt_stages(recipe, n_prompts)
    training = recipe.rounds.count > 0
    if training:
        out += _eval_stages(recipe, 0, held, "policy.r0")
    s = recipe.sampling
    for k in range(1, max(recipe.rounds.count, 1) + 1):
        policy = f"policy.r{k - 1}" if k > 1 else "policy.r0"
        samples = f"r{k}.sample"
        out.append(StageSpec(samples, "sample", k, table_name(recipe, "samples", k),
                             inputs={"prompts": "prompts", "policy": policy}, generations=train * (s.n + s.greedy),
                             max_new_tokens=s.max_tokens,
                             note=f"{train} prompts x n={s.n}{' + greedy' if s.greedy else ''}"
                                  f"{' + repaired greedy' if s.repair else ''} ({s.mode})"))
        if recipe.steps is not None:
            st = recipe.steps
            out.append(StageSpec(f"r{k}.steps", "steps", k, table_name(recipe, "steps", k),
                                 inputs={"samples": samples, "prompts": "prompts", "policy": policy},
                                 generations=train * s.n * _step_calls(st), max_new_tokens=st.max_tokens,
                                 note=f"{st.method} step labels"))
        scored: dict[str, str] = {}
        for sc in sorted(recipe.scoring, key=lambda c: c.combines):      # ensembles after their members
            name = sc.ref_name()
            sid = f"r{k}.score.{name}"
            what = f"judgments.{name}" if sc.pairwise else f"scores.{name}"
            per = sc.generations_per_item()
            items = train * s.n * (s.n - 1) // 2 if sc.pairwise else train * s.n
            if sc.pairwise and sc.max_pairs_per_prompt:
                items = train * min(s.n * (s.n - 1) // 2, sc.max_pairs_per_prompt)
            inputs = {"samples": samples, "prompts": "prompts", "policy": policy}
            if sc.combines:
                inputs.update({f"member.{m}": scored[m] for m in sc.members})
            out.append(StageSpec(sid, "ensemble" if sc.combines else "judge" if sc.pairwise else "score", k,
                                 table_name(recipe, what, k), inputs=inputs, params={"scorer": name},
                                 generations=items * per, max_new_tokens=sc.max_new_tokens(),
                                 note=f"{sc.kind_name()}" + (" (the policy judges)" if recipe.rounds.self_rewarding
                                                             and sc.uses_backend else "")))
            scored[name] = sid
        pair_inputs = {"samples": samples, "prompts": "prompts",
                       **{f"scores.{n}": i for n, i in scored.items() if not recipe.scorer(n).pairwise}}
        judges = [n for n in scored if recipe.scorer(n).pairwise]
        if judges:
            pair_inputs["judgments"] = scored[judges[0]]
        if recipe.steps is not None:
            pair_inputs["steps"] = f"r{k}.steps"
        out.append(StageSpec(f"r{k}.pairs", "pairs", k, table_name(recipe, "pairs", k), inputs=pair_inputs,
                             note=recipe.pairs.strategy))
        if not training:
            break
        t = recipe.training
        out.append(StageSpec(f"r{k}.train", "train", k, MODELS, inputs={"policy": policy, "pairs": f"r{k}.pairs"},
                             note=t.describe(), writes_table=True))
        out += _eval_stages(recipe, k, held, f"policy.r{k}")
    if recipe.export is not None:
        last = max(recipe.rounds.count, 1)
        what = f"r{last}.steps" if recipe.export.table == "steps" else f"r{last}.pairs"
        out.append(StageSpec("export", "export", last, recipe.export.out, inputs={"table": what},
                             note=f"{recipe.export.format}", writes_table=False, final=True, needs_success=True))
    if recipe.report is not None:
        out.append(StageSpec("report", "report", max(recipe.rounds.count, 1), recipe.report.out, writes_table=False,
                             final=True))
    return Plan(recipe=recipe.name, stages=out)


def format_plan(recipe: Recipe, plan: Plan) -> str:
    rows = [f"recipe {recipe.name}: {len(plan.stages)} stages, policy {recipe.policy.model} on {recipe.policy.kind}",
            f"{'round':>5}  {'stage':<28} {'output':<40} {'generations':>11} {'max tokens':>12}  note"]
    tot_g = tot_t = 0
    for st in plan.stages:
        toks = st.generations * st.max_new_tokens
        tot_g, tot_t = tot_g + st.generations, tot_t + toks
        rows.append(f"{st.round:>5}  {st.id:<28} {st.output:<40} {st.generations:>11,} {toks:>12,}  {st.note}")
    rows.append(f"{'total':>5}  {'':<28} {'':<40} {tot_g:>11,} {tot_t:>12,}  (tokens are an upper bound)")
    b = recipe.budget
    if b.max_generations and tot_g > b.max_generations or b.max_tokens and tot_t > b.max_tokens:
        rows.append(f"budget: the run will stop cleanly at max_generations={b.max_generations}, max_tokens={b.max_tokens}")
    return "\n".join(rows)


def plan_json(plan: Plan) -> str:
    return json.dumps({"recipe": plan.recipe, "tables": plan.tables(),
                       "stages": [asdict(s) for s in plan.stages]}, indent=2, default=str)
