"""The step-labels stage (process supervision): cut each sample into steps and label every step
by Monte-Carlo completion (Math-Shepherd), an LLM step judge, or a rule -> a `step_labels` table.

    ref = steps_stage(store, backend, StepsConfig(method="monte_carlo", k=8, mode="hard"),
                      samples="r1_samples", prompts="prompts", output="r1_step_labels")

monte_carlo: for step i the prefix prompt + steps[:i+1] (exactly as the model wrote them) is
continued k times as the same assistant turn; a step is good when >= 1 of k completed answers
reach the gold final answer (hard) or when the fraction that do is >= threshold (soft). The
model generates exactly n_steps x k continuations per sample (the row's `calls`). With
count_own_answer the answer's own remaining steps count as one more completion of each of its
prefixes (tries k + 1, calls still n_steps x k): a correct answer shows that every one of its
prefixes can reach the gold answer, which is what a hard label asserts; it is what makes the gold
solution (include_references) all-good when the policy's own continuations never finish. judge: k
verdicts per step from step_judge.jinja, good when the share of "correct" is >= threshold.
rule: good when the arithmetic in the step is right (and, with rule_final_answer, the last step
is bad when the final answer misses the reference).

Quarantined with a reason: no_steps, too_many_steps, truncated, no_reference (monte_carlo),
unparseable_judge_reply. Before any write: k < 1, and a splitter that finds no step in any
answer, are one-line errors. Resume: one row per sample keyed by label_id = hash(sample_id,
labeller); each batch of samples is one commit, so a crash loses at most the batch in flight.
`process_batch` holds the per-batch logic (for the stage driver).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from filters.math_answer import extract_answer
from filters.steps import (StepSplitConfig, mc_step_scores, reached_answer, rule_labels, arithmetic_errors,
                           split_steps, step_prefix, step_texts)
from generators.backends.base import Backend, BackendError, Sampling, tokens_spent
from generators.step_labels import (JUDGE_TEMPLATE, continuation_support, continue_prefixes, judge_steps,
                                    judge_template_hash)
from pipelines import keys
from pipelines.schemas import get_schema
from pipelines.driver import Batch, Identity, Usage, WorkBase, drive
from pipelines.driver import Item as DriverItem
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.steps")
Progress = Callable[[int, int], None]


class StepsConfig(BaseModel):
    """How answers are cut into steps and how each step is labelled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["monte_carlo", "judge", "rule"] = Field("monte_carlo", description="monte_carlo: k continuations "
                                                            "per step prefix (Math-Shepherd); judge: LLM step judge; "
                                                            "rule: arithmetic check, no model")
    split: StepSplitConfig = Field(default_factory=StepSplitConfig, description="how answers are cut into steps")
    k: int = Field(4, description="continuations (monte_carlo) or judge samples (judge) per step; >= 1")
    mode: Literal["hard", "soft"] = Field("hard", description="monte_carlo: hard = good if >= 1 of k reach the "
                                          "answer; soft = good if the fraction reaching it >= threshold")
    threshold: float = Field(0.5, gt=0, le=1, description="soft mode and judge: least fraction of good outcomes")
    temperature: float = Field(0.7, ge=0, description="sampling temperature of continuations / judge replies")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus mass of continuations / judge replies")
    max_tokens: int = Field(256, ge=1, description="longest continuation / judge reply in tokens")
    seed: int = Field(0, description="sampling seed (per batch, derived with the batch's first key)")
    judge_template: str = Field(JUDGE_TEMPLATE, description="judge: Jinja template asking about one step")
    template_dir: str | None = Field(None, description="judge: folder overriding generators/templates")
    rule_final_answer: bool = Field(True, description="rule: the last step is bad when the final answer misses "
                                    "the prompt's reference (prompts without one: arithmetic only)")
    include_references: bool = Field(False, description="also label gold reference samples (is_reference)")
    count_own_answer: bool = Field(False, description="monte_carlo: the answer's own remaining steps count as one "
                                   "more completion of each prefix (a correct answer's steps are then all good)")
    skip_truncated: bool = Field(True, description="quarantine samples cut at max_tokens (reason truncated)")
    batch_size: int = Field(8, ge=1, description="samples per backend call and per commit (not in keys)")

    @field_validator("k")
    @classmethod
    def _k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"k={v}; use k >= 1 continuations (or judge samples) per step, e.g. k: 8")
        return v

    @model_validator(mode="after")
    def _check(self) -> StepsConfig:
        if self.method != "rule" and self.k > 1 and self.temperature == 0:
            raise ValueError(f"k={self.k} samples per step at temperature 0 are {self.k} copies of one; "
                             "set temperature > 0 (e.g. 0.7) or k: 1")
        return self

    def sampling(self, seed: int) -> Sampling:
        return Sampling(n=self.k, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        seed=seed)


def labeller_id(cfg: StepsConfig, backend: Backend | None) -> str:
    """Everything that can change a label: method, model@revision, k, mode, sampling, splitter."""
    split = keys.content_hash("split", cfg.split.model_dump(mode="json"))[:12]
    if cfg.method == "rule":
        return f"rule:final{int(cfg.rule_final_answer)}:split#{split}"
    model = f"{backend.model_id}@{backend.revision}" if backend is not None else "?"
    judge = f"{cfg.judge_template}#{judge_template_hash(cfg.judge_template, cfg.template_dir)}"
    extra = f"{cfg.mode if cfg.method == 'monte_carlo' else judge}:th{cfg.threshold:g}"
    if cfg.method == "monte_carlo" and cfg.count_own_answer:
        extra += ":own"
    return (f"{cfg.method}:{model}:k{cfg.k}:{extra}:t{cfg.temperature:g}:p{cfg.top_p:g}:m{cfg.max_tokens}"
            f":s{cfg.seed}:split#{split}")


@dataclass(frozen=True)
class Item:
    """One sample to label: its key, texts, step spans, and a quarantine reason if it cannot be."""

    key: str
    sample_id: str
    prompt_id: str
    messages: list[dict]
    completion: str
    reference: str | None
    spans: list[tuple[int, int]]
    reason: str | None = None

    def payload(self) -> dict:
        return {"sample_id": self.sample_id, "prompt_id": self.prompt_id, "completion": self.completion,
                "steps": step_texts(self.completion, self.spans)}


def plan_items(frame: pl.DataFrame, cfg: StepsConfig, labeller: str) -> list[Item]:
    """An Item per sample row (sample_id, prompt_id, completion, finish_reason, messages, reference)."""
    items = []
    for r in frame.iter_rows(named=True):
        text = r["completion"] or ""
        spans = split_steps(text, cfg.split)
        ref = r["reference"] if r["reference"] and r["reference"].strip() else None
        reason = ("truncated" if cfg.skip_truncated and r["finish_reason"] == "length" else
                  "no_steps" if not spans else
                  "too_many_steps" if len(spans) > cfg.split.max_steps else
                  "no_reference" if cfg.method == "monte_carlo" and ref is None else None)
        items.append(Item(key=keys.content_hash("step_labels", r["sample_id"], labeller), sample_id=r["sample_id"],
                          prompt_id=r["prompt_id"], messages=[dict(m) for m in r["messages"]], completion=text,
                          reference=ref, spans=spans, reason=reason))
    return items


def _row(it: Item, labels: list[bool], scores: list[float], *, method: str, labeller: str, k: int, calls: int,
         details: dict) -> dict:
    return {"label_id": it.key, "sample_id": it.sample_id, "prompt_id": it.prompt_id, "prompt": it.messages,
            "steps": step_texts(it.completion, it.spans), "labels": labels, "step_scores": scores,
            "n_steps": len(it.spans), "first_wrong_step": next((i for i, g in enumerate(labels) if not g), None),
            "method": method, "labeller": labeller, "k": k, "calls": calls, "details": json.dumps(details)}


def _monte_carlo(backend: Backend, cfg: StepsConfig, items: Sequence[Item], *, seed: int, labeller: str,
                 spent: Usage) -> list[dict]:
    where = [(n, i) for n, it in enumerate(items) for i in range(len(it.spans))]
    prefixes = [step_prefix(items[n].completion, items[n].spans, i) for n, i in where]
    convs = [[*items[n].messages, {"role": "assistant", "content": p}] for (n, _), p in zip(where, prefixes)]
    outs = continue_prefixes(backend, convs, cfg.sampling(seed))
    for comps in outs:                      # calls = continuations, as the rows' `calls` count them
        prompt, completion = tokens_spent(comps)
        spent.add(Usage(calls=len(comps), prompt_tokens=prompt, completion_tokens=completion))
    rows = [{"label_id": items[n].key, "step": i, "text": p + c.text, "reference": items[n].reference}
            for (n, i), p, comps in zip(where, prefixes, outs) for c in comps]
    if cfg.count_own_answer:        # the answer itself continues each of its prefixes
        rows += [{"label_id": items[n].key, "step": i, "text": items[n].completion, "reference": items[n].reference}
                 for n, i in where]
    cont = pl.DataFrame(rows, schema={"label_id": pl.String, "step": pl.Int64, "text": pl.String,
                                      "reference": pl.String})
    cont = cont.with_columns(reached_answer("text", "reference").alias("reached"),
                             extract_answer(pl.col("text")).alias("answer"))
    scores = mc_step_scores(cont.lazy(), mode=cfg.mode, threshold=cfg.threshold).collect()
    by_key = {k: g.sort("step") for (k,), g in scores.group_by("label_id")}
    answers = {k: g.sort("step", maintain_order=True).group_by("step", maintain_order=True).agg("answer")["answer"]
               .to_list() for (k,), g in cont.group_by("label_id")}
    out = []
    for it in items:
        g = by_key[it.key]
        details = {"hits": g["hits"].to_list(), "tries": g["tries"].to_list(), "mode": cfg.mode,
                   "answers": answers[it.key],        # the final answer each continuation reached, per step
                   "own_answer_counted": cfg.count_own_answer}
        out.append(_row(it, g["label"].to_list(), g["score"].to_list(), method="monte_carlo", labeller=labeller,
                        k=cfg.k, calls=cfg.k * len(it.spans), details=details))
    return out


def _judge(backend: Backend, cfg: StepsConfig, items: Sequence[Item], *, seed: int, labeller: str,
           spent: Usage) -> tuple[list[dict], list[tuple[str, str, object]]]:
    verdicts = judge_steps(backend, [(it.messages, step_texts(it.completion, it.spans)) for it in items], k=cfg.k,
                           sampling=cfg.sampling(seed), template=cfg.judge_template, template_dir=cfg.template_dir)
    for vs in verdicts:                     # quarantined items' calls too: they were spent
        spent.calls += cfg.k * len(vs)
        spent.prompt_tokens += sum(v.prompt_tokens for v in vs)
        spent.completion_tokens += sum(v.completion_tokens for v in vs)
    rows, bad = [], []
    for it, vs in zip(items, verdicts):
        if any(v.score is None for v in vs):
            bad.append((it.key, "unparseable_judge_reply", {**it.payload(), "replies": [list(v.replies) for v in vs]}))
            continue
        scores = [float(v.score) for v in vs]
        rows.append(_row(it, [s >= cfg.threshold for s in scores], scores, method="judge", labeller=labeller, k=cfg.k,
                         calls=cfg.k * len(vs), details={"correct": [v.correct for v in vs],
                                                         "parsed": [v.parsed for v in vs],
                                                         "replies": [list(v.replies) for v in vs]}))
    return rows, bad


def _rule(cfg: StepsConfig, items: Sequence[Item], *, labeller: str) -> list[dict]:
    final_ok = pl.DataFrame({"text": [it.completion for it in items], "reference": [it.reference for it in items]},
                            schema={"text": pl.String, "reference": pl.String}).select(
        pl.when(pl.col("reference").is_null()).then(None).otherwise(reached_answer()).alias("ok"))["ok"].to_list()
    rows = []
    for it, ok in zip(items, final_ok):
        steps = step_texts(it.completion, it.spans)
        labels = rule_labels(steps)
        if cfg.rule_final_answer and ok is False:
            labels[-1] = False
        rows.append(_row(it, labels, [1.0 if g else 0.0 for g in labels], method="rule", labeller=labeller, k=0,
                         calls=0, details={"arithmetic_errors": [arithmetic_errors(s) for s in steps],
                                           "final_answer_ok": ok}))
    return rows


def process_batch(backend: Backend | None, cfg: StepsConfig, items: Sequence[Item], *, labeller: str,
                  seed: int) -> tuple[pl.DataFrame, list[tuple[str, str, object]], Usage]:
    """Label one batch: (step_labels rows, quarantine rows (key, reason, payload), what the model
    calls spent, quarantined items' included; tokens as the backend reported them)."""
    bad = [(it.key, it.reason, it.payload()) for it in items if it.reason is not None]
    ok = [it for it in items if it.reason is None]
    rows: list[dict] = []
    spent = Usage()
    if ok and cfg.method == "monte_carlo":
        rows = _monte_carlo(backend, cfg, ok, seed=seed, labeller=labeller, spent=spent)
    elif ok and cfg.method == "judge":
        rows, more = _judge(backend, cfg, ok, seed=seed, labeller=labeller, spent=spent)
        bad += more
    elif ok:
        rows = _rule(cfg, ok, labeller=labeller)
    return pl.DataFrame(rows, schema=get_schema("step_labels").schema), bad, spent


def steps_stage(store: Store, backend: Backend | None, cfg: StepsConfig, *, samples: str | TableRef,
                prompts: str | TableRef, output: str = "step_labels", progress: Progress | None = None) -> TableRef:
    """Label every sample's steps (see the module docstring); returns the completed output version.
    The backend must be loaded (its revision enters the keys); rule needs none."""
    if cfg.method != "rule" and (backend is None or not backend.revision):
        raise ValueError(f"method {cfg.method!r} needs a loaded backend; call backend.load() first (rule needs none)")
    if cfg.method == "monte_carlo" and continuation_support(backend) is None:
        raise BackendError(f"backend {type(backend).__name__} ({backend.model_id}) cannot continue an assistant "
                           "prefix; use kind vllm or transformers for monte_carlo step labels, or method judge/rule")
    s_ref, p_ref = store.ref(samples), store.ref(prompts)
    labeller = labeller_id(cfg, backend)
    models = {"labeller": {"id": backend.model_id, "revision": backend.revision}} if cfg.method != "rule" else {}
    templates = ({cfg.judge_template: judge_template_hash(cfg.judge_template, cfg.template_dir)}
                 if cfg.method == "judge" else {})
    ident = Identity(stage="steps", output=output, kind="step_labels", parents=(s_ref, p_ref),
                     config=cfg.model_dump(mode="json", exclude={"batch_size"}), models=models, templates=templates)
    work = StepsWork(store, backend, cfg, ident, samples=s_ref, prompts=p_ref, labeller=labeller)
    return drive(store, work, batch_size=cfg.batch_size, progress=progress)


class StepsWork(WorkBase):
    """The steps stage on the stage driver: one item per sample (keyed by its label id); a batch
    of samples is labelled and committed together."""

    def __init__(self, store: Store, backend: Backend | None, cfg: StepsConfig, identity: Identity, *,
                 samples: TableRef, prompts: TableRef, labeller: str):
        self.store, self.backend, self.cfg, self.identity = store, backend, cfg, identity
        self.samples, self.prompts, self.labeller = samples, prompts, labeller
        self.items: list = []

    def prepare(self, run) -> None:
        cfg, store = self.cfg, self.store
        samp = store.read(self.samples, columns=["sample_id", "prompt_id", "completion", "finish_reason",
                                                 "is_reference"])
        if not cfg.include_references:
            samp = samp.filter(~pl.col("is_reference").fill_null(False))
        frame = samp.join(store.read(self.prompts, columns=["prompt_id", "messages", "reference"]), on="prompt_id",
                          how="inner")
        items = plan_items(frame.sort("sample_id"), cfg, self.labeller)
        if items and all(not it.spans for it in items):
            raise ValueError(f"step splitter mode={cfg.split.mode!r} found no steps in any of the {len(items)} answers "
                             f"of {self.samples}; use mode 'lines', another pattern, or a separator that occurs in "
                             "the answers")
        if items and cfg.method == "monte_carlo" and all(it.reference is None for it in items):
            raise ValueError(f"monte_carlo step labels need gold answers, but no prompt of {self.prompts} has a "
                             "reference; import seeds with reference_column set, or use method 'judge' or 'rule'")
        self.items = items

    def total_units(self) -> int:
        return len(self.items)

    def target_keys(self) -> list[str]:
        return [it.key for it in self.items]

    def todo(self, done: set[str]) -> list[DriverItem]:
        return [DriverItem(it.key, it) for it in self.items if it.key not in done]

    def process(self, items: list[DriverItem]) -> Batch:
        batch = [it.payload for it in items]
        seed = int(keys.content_hash("batch-seed", self.cfg.seed, batch[0].key)[:8], 16)
        rows, bad, usage = process_batch(self.backend, self.cfg, batch, labeller=self.labeller, seed=seed)
        return Batch(rows=rows, bad=bad, usage=usage)
