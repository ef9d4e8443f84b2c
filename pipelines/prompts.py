"""Prompt supply stages (Nemotron-4 340B style): topic tree -> prompts per task type -> refinement,
plus optional Evol-Instruct evolution. Seed import, constraints and dedup live in pipelines/seeds.py.

    topics_stage(store, backend, TopicTreeConfig(n_macro=10, n_subtopics=5), output="topics")
    write_stage(store, backend, PromptWriteConfig(task_types=["open_qa", "writing"]), topics="topics")
    rewrite_stage(store, backend, RewriteConfig(kind="refine"), prompts="prompts", output="prompts_refined")

Each stage resumes per request: a subtopic request per macro topic, a prompt request per
(topic, task type), a rewrite per prompt. A reply that cannot be parsed is quarantined with
the request and the raw text (reason unparseable_output) and not asked again under the same
config. Prompt rows: prompt_id = keys.prompt_id(messages); split from the prompt_id hash.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from generators import evolve, prompt_writer, topics
from generators.backends.base import Backend, Sampling
from generators.listparse import Parsed
from pipelines import keys
from pipelines.schemas import get_schema
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.prompts")


def split_of(prompt_id: str, heldout_fraction: float) -> str:
    """'heldout' for a deterministic `heldout_fraction` of prompt ids, else 'train'."""
    return "heldout" if int(prompt_id[:8], 16) / 2**32 < heldout_fraction else "train"


def prompt_row(messages: Sequence[dict], *, task_type: str | None, source: str, heldout_fraction: float,
               topic_id: str | None = None, constraints: str = "[]", reference: str | None = None) -> dict:
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    pid = keys.prompt_id(msgs)
    return {"prompt_id": pid, "messages": msgs, "task_type": task_type, "constraints": constraints,
            "reference": reference, "source": source, "topic_id": topic_id, "split": split_of(pid, heldout_fraction)}


def prompts_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=get_schema("prompts").schema).unique("prompt_id", keep="first", maintain_order=True)


class GenConfig(BaseModel):
    """Sampling for prompt-supply requests (shared fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0, description="sampling temperature of the generator")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus mass of the generator")
    max_tokens: int = Field(512, ge=16, description="maximum reply length in tokens")
    seed: int = Field(0, description="generator seed")
    batch_size: int = Field(32, ge=1, description="requests per backend call and per commit (not in the fingerprint)")
    template_dir: str | None = Field(None, description="folder of Jinja templates overriding generators/templates")

    def sampling(self) -> Sampling:
        return Sampling(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)


class TopicTreeConfig(GenConfig):
    macro_topics: tuple[str, ...] = Field((), description="macro topics to use as given; empty = generate n_macro")
    n_macro: int = Field(20, ge=1, description="quota of generated macro topics")
    n_subtopics: int = Field(10, ge=0, description="quota of subtopics per macro topic (0 = none)")
    domain: str = Field("", description="optional domain the macro topics should be about")
    attempts: int = Field(3, ge=1, description="requests to fill the macro-topic quota")


class PromptWriteConfig(GenConfig):
    task_types: tuple[prompt_writer.TaskType, ...] = Field(("open_qa", "writing", "closed_qa", "math", "coding"),
                                                           description="task types to write prompts for")
    n_prompts: int = Field(5, ge=1, description="quota of prompts per (topic, task type)")
    language: str = Field("Python", description="programming language of coding prompts")
    heldout_fraction: float = Field(0.1, ge=0, le=1, description="fraction of prompts assigned to the held-out split")


class RewriteConfig(GenConfig):
    kind: Literal["refine", "evolve"] = Field("refine", description="refine: make prompts more specific; evolve: "
                                              "Evol-Instruct add_constraints/deepen/concretize")
    ops: tuple[evolve.EvolOp, ...] = Field(evolve.EVOL_OPS, description="evolution ops, one picked per prompt")
    keep_original: bool = Field(False, description="also copy the input prompts to the output")
    heldout_fraction: float = Field(0.1, ge=0, le=1, description="fraction of prompts assigned to the held-out split")


def _stage_config(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json", exclude={"batch_size"})


def _models(backend: Backend) -> dict:
    return {"generator": {"id": backend.model_id, "revision": backend.revision}}


def _bad(key: str, p: Parsed) -> tuple[str, str, dict]:
    return key, "unparseable_output", {"request": p.request, "raw": p.raw, "error": p.error}


def topic_id(text: str, parent: str | None) -> str:
    return keys.content_hash("topic", parent or "", keys.normalize_text(text).casefold())


def topics_stage(store: Store, backend: Backend, cfg: TopicTreeConfig, *, output: str = "topics") -> TableRef:
    """Macro topics (given or generated) and subtopics per topic -> a `topics` table."""
    run = StageRun(store, stage="topics", output=output, kind="topics", config=_stage_config(cfg),
                   models=_models(backend), templates=topics.template_hashes(cfg.template_dir))
    if run.reused:
        return run.reused
    schema = get_schema("topics").schema
    have = store.read(output) if store.exists(output) else pl.DataFrame(schema=schema)
    done = run.done_keys()
    src = f"generated:{backend.model_id}"
    if cfg.macro_topics:
        macro = [(topic_id(t, None), t, "given") for t in dict.fromkeys(cfg.macro_topics)]
    else:
        old = have.filter((pl.col("depth") == 0) & (pl.col("source") == src))
        macro = [(r["topic_id"], r["text"], src) for r in old.to_dicts()][:cfg.n_macro]
        if not macro:
            results = topics.generate_topics(backend, n=cfg.n_macro, sampling=cfg.sampling(), domain=cfg.domain,
                                             attempts=cfg.attempts, template_dir=cfg.template_dir)
            run.quarantine([_bad(keys.content_hash("topics-request", i), p) for i, p in enumerate(results) if p.error])
            macro = [(topic_id(t, None), t, src) for t in topics.topics_of(results, limit=cfg.n_macro)]
    run.write(pl.DataFrame([{"topic_id": k, "parent_id": None, "depth": 0, "text": t, "source": s}
                            for k, t, s in macro], schema=schema))
    asked = done | set(have.get_column("parent_id").drop_nulls().to_list())
    todo = [(k, t) for k, t, _ in macro if k not in asked] if cfg.n_subtopics else []
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        results = topics.generate_subtopics(backend, [t for _, t in batch], n=cfg.n_subtopics,
                                            sampling=cfg.sampling(), template_dir=cfg.template_dir)
        rows = [{"topic_id": topic_id(s, k), "parent_id": k, "depth": 1, "text": s, "source": src}
                for (k, _), p in zip(batch, results) for s in p.items]
        run.write(pl.DataFrame(rows, schema=schema).unique("topic_id", keep="first", maintain_order=True))
        run.quarantine([_bad(k, p) for (k, _), p in zip(batch, results) if p.error])
    macro_ids = {k for k, _, _ in macro}
    now = store.read(output, columns=["topic_id", "parent_id"])
    target = now.filter(pl.col("topic_id").is_in(list(macro_ids)) | pl.col("parent_id").is_in(list(macro_ids)))
    return run.finish(rows_in=len(macro), target_keys=target.get_column("topic_id").to_list())


def write_stage(store: Store, backend: Backend, cfg: PromptWriteConfig, *, topics_ref: str | TableRef = "topics",
                output: str = "prompts") -> TableRef:
    """Prompts per (leaf topic, task type): leaves are subtopics, or macro topics without any."""
    tref = store.ref(topics_ref)
    run = StageRun(store, stage="write_prompts", output=output, kind="prompts", parents=[tref],
                   config=_stage_config(cfg), models=_models(backend),
                   templates=prompt_writer.template_hashes(cfg.task_types, refine=False, template_dir=cfg.template_dir))
    if run.reused:
        return run.reused
    tt = store.read(tref)
    parents = set(tt.get_column("parent_id").drop_nulls().to_list())
    leaves = tt.filter(~pl.col("topic_id").is_in(list(parents)))
    requests = [(keys.content_hash("prompt-request", r["topic_id"], t), r["topic_id"], r["text"], t)
                for t in cfg.task_types for r in leaves.to_dicts()]
    done = run.done_keys()
    if store.exists(output):
        have = store.read(output, columns=["topic_id", "task_type"]).unique()
        done |= {keys.content_hash("prompt-request", a, b) for a, b in have.iter_rows()}
    todo = [r for r in requests if r[0] not in done]
    for task_type in cfg.task_types:
        group = [r for r in todo if r[3] == task_type]
        for start in range(0, len(group), cfg.batch_size):
            batch = group[start:start + cfg.batch_size]
            results = prompt_writer.write_prompts(backend, [r[2] for r in batch], task_type=task_type, n=cfg.n_prompts,
                                                  sampling=cfg.sampling(), language=cfg.language,
                                                  template_dir=cfg.template_dir)
            rows = [prompt_row([{"role": "user", "content": text}], task_type=task_type, source="generated",
                               topic_id=r[1], heldout_fraction=cfg.heldout_fraction)
                    for r, p in zip(batch, results) for text in p.items]
            run.write(prompts_frame(rows))
            run.quarantine([_bad(r[0], p) for r, p in zip(batch, results) if p.error])
    tids = set(leaves.get_column("topic_id").to_list())
    target = store.read(output, columns=["prompt_id", "topic_id"]).filter(pl.col("topic_id").is_in(list(tids))) \
        if store.exists(output) else pl.DataFrame({"prompt_id": []})
    return run.finish(rows_in=len(requests), target_keys=target.get_column("prompt_id").to_list())


def rewrite_stage(store: Store, backend: Backend, cfg: RewriteConfig, *, prompts: str | TableRef = "prompts",
                  output: str = "prompts_refined") -> TableRef:
    """Refine or evolve each prompt (single-turn user prompts) into a new prompt row; the source
    column records `<kind>:<op>:<parent prompt_id>`. Rejected evolutions are quarantined."""
    pref = store.ref(prompts)
    templates = (prompt_writer.template_hashes([], refine=True, template_dir=cfg.template_dir) if cfg.kind == "refine"
                 else evolve.template_hashes(cfg.ops, cfg.template_dir))
    run = StageRun(store, stage=cfg.kind, output=output, kind="prompts", parents=[pref], config=_stage_config(cfg),
                   models=_models(backend), templates=templates)
    if run.reused:
        return run.reused
    src = store.read(pref)
    done = run.done_keys() - set(store.keys(output).to_list())      # quarantined parents of this config
    if store.exists(output):
        done |= {s.rsplit(":", 1)[-1] for s in store.read(output, columns=["source"]).get_column("source").drop_nulls()
                 if s.startswith(cfg.kind + ":")}
    target: list[str] = []
    if cfg.keep_original:
        run.write(src)
        target += src.get_column("prompt_id").to_list()
    todo = [r for r in src.to_dicts() if r["prompt_id"] not in done]
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        texts = [r["messages"][-1]["content"] for r in batch]
        if cfg.kind == "refine":
            ops = ["refine"] * len(batch)
            results = prompt_writer.refine_prompts(backend, texts, task_types=[r["task_type"] or "open_qa" for r in batch],
                                                   sampling=cfg.sampling(), template_dir=cfg.template_dir)
        else:
            ops = [evolve.pick_op(r["prompt_id"], cfg.ops, seed=cfg.seed) for r in batch]
            results = evolve.evolve_prompts(backend, texts, ops=ops, sampling=cfg.sampling(), template_dir=cfg.template_dir)
        rows, bad = [], []
        for r, op, text, p in zip(batch, ops, texts, results):
            reason = "unparseable_output" if p.error else (
                evolve.evolution_failure(text, p.text) if cfg.kind == "evolve" else None)
            if reason:
                bad.append((r["prompt_id"], reason, {"request": p.request, "raw": p.raw, "error": p.error}))
                continue
            msgs = [*r["messages"][:-1], {"role": "user", "content": p.text}]
            rows.append(prompt_row(msgs, task_type=r["task_type"], source=f"{cfg.kind}:{op}:{r['prompt_id']}",
                                   topic_id=r["topic_id"], constraints=r["constraints"] or "[]",
                                   reference=None, heldout_fraction=cfg.heldout_fraction))
        run.write(prompts_frame(rows))
        run.quarantine(bad)
    parents = set(src.get_column("prompt_id").to_list())
    if store.exists(output):
        out = store.read(output, columns=["prompt_id", "source"]).filter(
            pl.col("source").str.split(":").list.last().is_in(list(parents)) & pl.col("source").str.starts_with(cfg.kind + ":"))
        target += out.get_column("prompt_id").to_list()
    return run.finish(rows_in=src.height, target_keys=target)


def describe_drops(store: Store, ref: TableRef) -> str:
    """One line: rows and drop reasons of a completed prompts version (for logs and reports)."""
    from pipelines.stage import lineage_of

    rec = lineage_of(store, ref.name).filter(pl.col("version") == ref.version)
    drops = json.loads(rec.get_column("drops")[0]) if rec.height else {}
    return f"{ref}: {store.read(ref, columns=['prompt_id']).height} prompts; drops {drops or 'none'}"
