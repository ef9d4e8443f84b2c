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
from pipelines.driver import Batch, Identity, Item, Usage, WorkBase, drive
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.prompts")


SPLITS = ("train", "validation", "heldout")


def split_of(prompt_id: str, heldout_fraction: float, validation_fraction: float = 0.0) -> str:
    """The split of a new prompt, by its id's hash: 'heldout' (the test split evals run on) for a
    `heldout_fraction` of ids, 'validation' (for tuning) for the next `validation_fraction`, else
    'train'. Prompts derived from a prompt (refined, evolved, constrained, dialogues) keep its split."""
    u = int(prompt_id[:8], 16) / 2**32
    return "heldout" if u < heldout_fraction else "validation" if u < heldout_fraction + validation_fraction else "train"


def prompt_row(messages: Sequence[dict], *, task_type: str | None, source: str, heldout_fraction: float = 0.0,
               validation_fraction: float = 0.0, topic_id: str | None = None, constraints: str = "[]",
               reference: str | None = None, split: str | None = None) -> dict:
    """A prompts-table row; `split` carries a parent's split (derived prompts), else it is drawn
    from the new id with the two fractions."""
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    pid = keys.prompt_id(msgs)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return {"prompt_id": pid, "messages": msgs, "task_type": task_type, "constraints": constraints,
            "reference": reference, "source": source, "topic_id": topic_id,
            "split": split or split_of(pid, heldout_fraction, validation_fraction)}


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
    validation_fraction: float = Field(0.0, ge=0, le=1, description="fraction assigned to the validation split")


class RewriteConfig(GenConfig):
    kind: Literal["refine", "evolve"] = Field("refine", description="refine: make prompts more specific; evolve: "
                                              "Evol-Instruct add_constraints/deepen/concretize")
    ops: tuple[evolve.EvolOp, ...] = Field(evolve.EVOL_OPS, description="evolution ops, one picked per prompt")
    keep_original: bool = Field(False, description="also copy the input prompts to the output")


class RefineConfig(RewriteConfig):
    kind: Literal["refine"] = Field("refine", description="refine: make prompts more specific")


class EvolveConfig(RewriteConfig):
    kind: Literal["evolve"] = Field("evolve", description="evolve: Evol-Instruct add_constraints/deepen/concretize")


def _stage_config(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json", exclude={"batch_size"})


def _models(backend: Backend) -> dict:
    return {"generator": {"id": backend.model_id, "revision": backend.revision}}


def _bad(key: str, p: Parsed) -> tuple[str, str, dict]:
    return key, "unparseable_output", {"request": p.request, "raw": p.raw, "error": p.error}


def topic_id(text: str, parent: str | None) -> str:
    return keys.content_hash("topic", parent or "", keys.normalize_text(text).casefold())


class TopicsWork(WorkBase):
    """Macro topics (given, or generated once in `prepare`), then one subtopic request per macro
    topic (item key = the macro topic id; done = it has subtopics or a quarantined request)."""

    def __init__(self, store: Store, backend: Backend, cfg: TopicTreeConfig, *, output: str):
        self.store, self.backend, self.cfg, self.output = store, backend, cfg, output
        self.identity = Identity(stage="topics", output=output, kind="topics", config=_stage_config(cfg),
                                 models=_models(backend), templates=topics.template_hashes(cfg.template_dir))
        self.macro: list[tuple[str, str, str]] = []
        self.schema = get_schema("topics").schema

    def prepare(self, run: StageRun) -> None:
        cfg, backend = self.cfg, self.backend
        have = self.store.read(self.output) if self.store.exists(self.output) else pl.DataFrame(schema=self.schema)
        src = f"generated:{backend.model_id}"
        if cfg.macro_topics:
            macro = [(topic_id(t, None), t, "given") for t in dict.fromkeys(cfg.macro_topics)]
        else:
            old = have.filter((pl.col("depth") == 0) & (pl.col("source") == src))
            macro = [(r["topic_id"], r["text"], src) for r in old.to_dicts()][:cfg.n_macro]
            if not macro:
                results = topics.generate_topics(backend, n=cfg.n_macro, sampling=cfg.sampling(), domain=cfg.domain,
                                                 attempts=cfg.attempts, template_dir=cfg.template_dir)
                run.quarantine([_bad(keys.content_hash("topics-request", i), p) for i, p in enumerate(results)
                                if p.error])
                macro = [(topic_id(t, None), t, src) for t in topics.topics_of(results, limit=cfg.n_macro)]
        run.write(pl.DataFrame([{"topic_id": k, "parent_id": None, "depth": 0, "text": t, "source": s}
                                for k, t, s in macro], schema=self.schema))
        self.macro = macro

    def total_units(self) -> int:
        return len(self.macro) if self.cfg.n_subtopics else 0

    def rows_in(self) -> int:
        return len(self.macro)

    def todo(self, done: set[str]) -> list[Item]:
        if not self.cfg.n_subtopics:
            return []
        out = self.store.read(self.output, columns=["topic_id", "parent_id"])
        quarantined = done - set(out["topic_id"].to_list())    # committed macro ids are rows, not requests
        asked = quarantined | set(out["parent_id"].drop_nulls().to_list())
        return [Item(k, t) for k, t, _ in self.macro if k not in asked]

    def process(self, items: list[Item]) -> Batch:
        src = f"generated:{self.backend.model_id}"
        results = topics.generate_subtopics(self.backend, [it.payload for it in items], n=self.cfg.n_subtopics,
                                            sampling=self.cfg.sampling(), template_dir=self.cfg.template_dir)
        rows = [{"topic_id": topic_id(t, it.key), "parent_id": it.key, "depth": 1, "text": t, "source": src}
                for it, p in zip(items, results) for t in p.items]
        frame = pl.DataFrame(rows, schema=self.schema).unique("topic_id", keep="first", maintain_order=True)
        return Batch(rows=frame, bad=[_bad(it.key, p) for it, p in zip(items, results) if p.error],
                     usage=_usage(results))

    def target_keys(self) -> list[str]:
        ids = [k for k, _, _ in self.macro]
        now = self.store.read(self.output, columns=["topic_id", "parent_id"])
        return now.filter(pl.col("topic_id").is_in(ids) | pl.col("parent_id").is_in(ids))["topic_id"].to_list()


def _usage(results: Sequence[Parsed]) -> Usage:
    return Usage(calls=len(results))


def topics_stage(store: Store, backend: Backend, cfg: TopicTreeConfig, *, output: str = "topics") -> TableRef:
    """Macro topics (given or generated) and subtopics per topic -> a `topics` table."""
    return drive(store, TopicsWork(store, backend, cfg, output=output), batch_size=cfg.batch_size)


class WriteWork(WorkBase):
    """One prompt-writing request per (leaf topic, task type); done = its prompts are written
    (topic_id + task_type in the output) or the request was quarantined."""

    def __init__(self, store: Store, backend: Backend, cfg: PromptWriteConfig, *, topics_ref: TableRef, output: str):
        self.store, self.backend, self.cfg, self.topics, self.output = store, backend, cfg, topics_ref, output
        self.identity = Identity(stage="write_prompts", output=output, kind="prompts", parents=(topics_ref,),
                                 config=_stage_config(cfg), models=_models(backend),
                                 templates=prompt_writer.template_hashes(cfg.task_types, refine=False,
                                                                         template_dir=cfg.template_dir))
        self.requests: list[tuple[str, str, str, str]] = []
        self.leaf_ids: set[str] = set()

    def prepare(self, run: StageRun) -> None:
        tt = self.store.read(self.topics)
        parents = set(tt.get_column("parent_id").drop_nulls().to_list())
        leaves = tt.filter(~pl.col("topic_id").is_in(list(parents)))
        self.leaf_ids = set(leaves["topic_id"].to_list())
        self.requests = [(keys.content_hash("prompt-request", r["topic_id"], t), r["topic_id"], r["text"], t)
                         for t in self.cfg.task_types for r in leaves.to_dicts()]

    def total_units(self) -> int:
        return len(self.requests)

    def todo(self, done: set[str]) -> list[Item]:
        if self.store.exists(self.output):
            have = self.store.read(self.output, columns=["topic_id", "task_type"]).unique()
            done = done | {keys.content_hash("prompt-request", a, b) for a, b in have.iter_rows()}
        return [Item(r[0], r) for r in self.requests if r[0] not in done]

    def process(self, items: list[Item]) -> Batch:
        rows, bad, calls = [], [], 0
        for task_type in self.cfg.task_types:
            group = [it.payload for it in items if it.payload[3] == task_type]
            if not group:
                continue
            results = prompt_writer.write_prompts(self.backend, [r[2] for r in group], task_type=task_type,
                                                  n=self.cfg.n_prompts, sampling=self.cfg.sampling(),
                                                  language=self.cfg.language, template_dir=self.cfg.template_dir)
            calls += len(results)
            rows += [prompt_row([{"role": "user", "content": text}], task_type=task_type, source="generated",
                                topic_id=r[1], heldout_fraction=self.cfg.heldout_fraction,
                                validation_fraction=self.cfg.validation_fraction)
                     for r, p in zip(group, results) for text in p.items]
            bad += [_bad(r[0], p) for r, p in zip(group, results) if p.error]
        return Batch(rows=prompts_frame(rows), bad=bad, usage=Usage(calls=calls))

    def target_keys(self) -> list[str]:
        if not self.store.exists(self.output):
            return []
        out = self.store.read(self.output, columns=["prompt_id", "topic_id"])
        return out.filter(pl.col("topic_id").is_in(list(self.leaf_ids)))["prompt_id"].to_list()


def write_stage(store: Store, backend: Backend, cfg: PromptWriteConfig, *, topics_ref: str | TableRef = "topics",
                output: str = "prompts") -> TableRef:
    """Prompts per (leaf topic, task type): leaves are subtopics, or macro topics without any."""
    work = WriteWork(store, backend, cfg, topics_ref=store.ref(topics_ref), output=output)
    return drive(store, work, batch_size=cfg.batch_size)


class RewriteWork(WorkBase):
    """Refine or evolve each prompt into a new prompt row (source `<kind>:<op>:<parent id>`); one
    item per input prompt, done when a row names it as its parent or it was quarantined."""

    def __init__(self, store: Store, backend: Backend, cfg: RewriteConfig, *, prompts: TableRef, output: str):
        self.store, self.backend, self.cfg, self.prompts, self.output = store, backend, cfg, prompts, output
        templates = (prompt_writer.template_hashes([], refine=True, template_dir=cfg.template_dir)
                     if cfg.kind == "refine" else evolve.template_hashes(cfg.ops, cfg.template_dir))
        self.identity = Identity(stage=cfg.kind, output=output, kind="prompts", parents=(prompts,),
                                 config=_stage_config(cfg), models=_models(backend), templates=templates)
        self.src = pl.DataFrame()

    def prepare(self, run: StageRun) -> None:
        self.src = self.store.read(self.prompts)
        if self.cfg.keep_original:
            run.write(self.src)

    def total_units(self) -> int:
        return self.src.height

    def _made(self) -> set[str]:
        """Parent prompt ids that already have a rewritten row of this kind."""
        if not self.store.exists(self.output):
            return set()
        pref = self.cfg.kind + ":"
        return {s.rsplit(":", 1)[-1] for s in self.store.read(self.output, columns=["source"])["source"].drop_nulls()
                if s.startswith(pref)}

    def todo(self, done: set[str]) -> list[Item]:
        kept = set(self.src["prompt_id"].to_list()) if self.cfg.keep_original else set()
        quarantined = done - set(self.store.keys(self.output).to_list()) if self.store.exists(self.output) else done
        skip = (quarantined - kept) | self._made()
        return [Item(r["prompt_id"], r) for r in self.src.to_dicts() if r["prompt_id"] not in skip]

    def process(self, items: list[Item]) -> Batch:
        cfg, batch = self.cfg, [it.payload for it in items]
        texts = [r["messages"][-1]["content"] for r in batch]
        if cfg.kind == "refine":
            ops = ["refine"] * len(batch)
            results = prompt_writer.refine_prompts(self.backend, texts,
                                                   task_types=[r["task_type"] or "open_qa" for r in batch],
                                                   sampling=cfg.sampling(), template_dir=cfg.template_dir)
        else:
            ops = [evolve.pick_op(r["prompt_id"], cfg.ops, seed=cfg.seed) for r in batch]
            results = evolve.evolve_prompts(self.backend, texts, ops=ops, sampling=cfg.sampling(),
                                            template_dir=cfg.template_dir)
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
                                   reference=None, split=r["split"]))
        return Batch(rows=prompts_frame(rows), bad=bad, usage=Usage(calls=len(results)))

    def target_keys(self) -> list[str]:
        target = self.src["prompt_id"].to_list() if self.cfg.keep_original else []
        if self.store.exists(self.output):
            parents = set(self.src["prompt_id"].to_list())
            out = self.store.read(self.output, columns=["prompt_id", "source"]).filter(
                pl.col("source").str.split(":").list.last().is_in(list(parents))
                & pl.col("source").str.starts_with(self.cfg.kind + ":"))
            target += out["prompt_id"].to_list()
        return target


def rewrite_stage(store: Store, backend: Backend, cfg: RewriteConfig, *, prompts: str | TableRef = "prompts",
                  output: str = "prompts_refined") -> TableRef:
    """Refine or evolve each prompt (single-turn user prompts) into a new prompt row; the source
    column records `<kind>:<op>:<parent prompt_id>`. Rejected evolutions are quarantined; with
    keep_original the input prompts are copied to the output too."""
    work = RewriteWork(store, backend, cfg, prompts=store.ref(prompts), output=output)
    return drive(store, work, batch_size=cfg.batch_size)


def describe_drops(store: Store, ref: TableRef) -> str:
    """One line: rows and drop reasons of a completed prompts version (for logs and reports)."""
    from pipelines.stage import lineage_of

    rec = lineage_of(store, ref.name).filter(pl.col("version") == ref.version)
    drops = json.loads(rec.get_column("drops")[0]) if rec.height else {}
    return f"{ref}: {store.read(ref, columns=['prompt_id']).height} prompts; drops {drops or 'none'}"
