"""The sampling stage: completions from the current policy for every prompt of a prompts table.

    ref = sample_stage(store, backend, SamplingStageConfig(mode="best_of_n", n=8),
                       prompts="prompts", output="r1_samples", progress=lambda d, t: ...)

Modes:
- best_of_n: n samples per prompt (scorers then pick best/worst).
- spin: prompts with a gold `reference` get n policy samples plus the gold answer as a sample row
  with is_reference=True (SPIN pairs gold vs. own generation); prompts without a reference are
  quarantined (reason spin_needs_reference).
- sppo: k = n samples per prompt kept together for pairwise win-rate estimation; sampled like
  best_of_n, the mode is recorded in the config/lineage.

`greedy: true` (best_of_n) adds one answer per prompt at temperature 0, sample_index n, keyed
with its own sampling parameters: the policy's answer under the decoding an eval uses. Sampled
answers rarely show greedy decoding's failures (on the demo's base model 16 of 17 cut-off greedy
test answers were repetition loops, none of 118 cut-off samples at temperature 1 were), so only
with the greedy answer in the pool can a loop become a rejected answer (pairs.tie_break:
greedy_first).

`repair: true` (with greedy) adds, for a prompt with constraints whose greedy answer fails them,
that answer repaired by rule (filters/constraints/repair.py: cut before a loop, the start phrase
added, lower-cased, three bullets ...): sample_index n + 1, `sampling` {"repair": ..., "of": the
greedy sample_id}. Where the backend can count tokens (`count_tokens`: the vLLM engine, the
transformers model, a started vLLM server), the repair must fit the policy's budget as an
answer the policy could write would: fewer tokens than max_tokens (an upper-cased repair of a
long answer took 284-506 SmolLM2 tokens against max_tokens 256); its last sentences go until it
does, and its completion_tokens is that count. An HTTP endpoint gives no tokenizer: its repairs
are not counted (completion_tokens null). A small policy's pool rarely holds an answer that follows an
instruction the policy does not follow yet; the repaired answer is that answer, made of the
policy's own text, so the pair differs where the constraint is. Scored like any other sample;
where no edit meets the constraints no row is written. It is written in the same commit as its
greedy answer; a rerun that finds the greedy answer stored and its repair missing repairs the
stored text.

Every sample is keyed by keys.sample_id(prompt_id, policy, revision, sampling.key_params(), seed,
index). Resume is record-level: keys already committed are skipped, so an interrupted run
continues where it stopped and a rerun with a larger n samples only the missing indices. Each
batch of prompts is one atomic commit; batch_size is not part of any key or of the fingerprint.

Seeds: the engine is reseeded per batch with a seed derived from (seed, the batch's first sample
key), so a batch's text is reproducible; as with any engine-level seed, a sample's text depends
on the batch it was drawn in. No Prefect or rich here: pass `progress(done, total)` to observe.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from generators.backends.base import Backend, Completion, Sampling, tokens_spent
from filters.instructions import check_strict, loads, repair, task_text
from pipelines import keys
from pipelines.driver import Batch, Identity, Item, Usage, WorkBase, drive
from pipelines.schemas import get_schema
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.sampling")

Progress = Callable[[int, int], None]
GOLD_POLICY = "gold"


class SamplingStageConfig(BaseModel):
    """How to sample completions from the policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["best_of_n", "spin", "sppo"] = Field("best_of_n", description="best_of_n: n samples per prompt; "
                                                       "spin: n samples + the gold reference as a sample; sppo: k=n "
                                                       "samples kept together for pairwise win rates")
    n: int = Field(4, ge=1, description="samples per prompt from the policy (k for sppo)")
    temperature: float = Field(0.8, ge=0, description="sampling temperature (0 = greedy: all n samples equal)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, description="maximum completion length in tokens")
    stop: tuple[str, ...] = Field((), description="stop strings (cut from the text)")
    seed: int = Field(0, description="sampling seed; enters every sample key")
    split: Literal["train", "validation", "heldout", "all"] = Field("train", description="which prompts to sample")
    batch_size: int = Field(64, ge=1, description="prompts per backend call and per commit (not in keys)")
    greedy: bool = Field(False, description="best_of_n: one more answer per prompt at temperature 0 (an eval's "
                         "decoding), sample_index n, scored and paired with the n samples")
    repair: bool = Field(False, description="with greedy: also the greedy answer repaired by rule to meet the "
                         "prompt's constraints (filters/constraints/repair.py), sample_index n + 1, where it fails "
                         "them and an edit can meet them")

    @model_validator(mode="after")
    def _check_greedy(self):
        if self.greedy and self.mode != "best_of_n":
            raise ValueError(f"sampling.greedy works with mode best_of_n, not {self.mode!r}; drop greedy or use "
                             "best_of_n")
        if self.repair and not self.greedy:
            raise ValueError("sampling.repair edits the greedy answer; set sampling.greedy: true or drop repair")
        if self.greedy and self.temperature == 0:
            raise ValueError("sampling.greedy with temperature 0: the n samples are greedy already; set a "
                             "temperature > 0 or drop greedy")
        return self

    def sampling(self) -> Sampling:
        return Sampling(n=self.n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        stop=tuple(self.stop), seed=self.seed)

    def greedy_sampling(self) -> Sampling:
        """The extra greedy answer's parameters (temperature 0, top_p 1, one answer)."""
        return replace(self.sampling(), n=1, temperature=0.0, top_p=1.0)


REPAIR_RULES = "repair-2"      # bump when filters/constraints/repair.py changes what it writes
# repair-2: the repair fits the policy's token budget (fewer tokens than max_tokens) where the backend counts tokens


def _batch_seed(seed: int, first_key: str) -> int:
    return int(keys.content_hash("batch-seed", seed, first_key)[:8], 16)


def _reference_row(pid: str, reference: str) -> dict:
    rev = keys.content_hash("reference", reference)[:12]
    sid = keys.sample_id(pid, policy=GOLD_POLICY, revision=rev, sampling={"reference": True}, seed=0, index=0)
    return {"sample_id": sid, "prompt_id": pid, "policy": GOLD_POLICY, "policy_revision": rev, "sample_index": 0,
            "seed": 0, "sampling": json.dumps({"reference": True}), "completion": reference, "finish_reason": "stop",
            "prompt_tokens": None, "completion_tokens": None, "is_reference": True}


class SampleWork(WorkBase):
    """The sampling stage on the stage driver: one item per prompt (its missing sample indices),
    plus one item per SPIN gold answer."""

    def __init__(self, store: Store, backend: Backend, cfg: SamplingStageConfig, *, prompts: TableRef,
                 output: str, only: set[str] | None = None):
        if not backend.revision:
            raise ValueError(f"backend {backend.model_id!r} has no revision; call backend.load() before sampling")
        self.store, self.backend, self.cfg, self.prompts, self.only = store, backend, cfg, prompts, only
        self.sampling = cfg.sampling()
        self.identity = Identity(stage="sample", output=output, kind="samples", parents=(prompts,),
                                 config={**cfg.model_dump(mode="json", exclude={"batch_size"}),
                                         **({"prompt_ids": sorted(only)} if only is not None else {})},
                                 models={"policy": {"id": backend.model_id, "revision": backend.revision}})
        self.wanted: dict[str, list[str]] = {}
        self.greedy: dict[str, str] = {}          # prompt_id -> the greedy answer's sample_id
        self.repairs: dict[str, str] = {}         # prompt_id -> the repaired greedy answer's sample_id
        self.constraints: dict[str, tuple[list[dict], str]] = {}   # prompt_id -> (constraints, request text)
        self.convs: dict[str, list[dict]] = {}
        self.refs: list[dict] = []
        self.skipped: list[tuple[str, str, object]] = []

    def prepare(self, run) -> None:
        cfg, key_params = self.cfg, self.sampling.key_params()
        frame = self.store.read(self.prompts, columns=["prompt_id", "messages", "reference", "split", "constraints"])
        if cfg.split != "all":
            frame = frame.filter(pl.col("split") == cfg.split)
        if self.only is not None:
            frame = frame.filter(pl.col("prompt_id").is_in(sorted(self.only)))
        if cfg.mode == "spin":
            no_ref = frame.filter(pl.col("reference").is_null() | (pl.col("reference").str.strip_chars() == ""))
            self.skipped = [(r["prompt_id"], "spin_needs_reference", {"prompt_id": r["prompt_id"]})
                            for r in no_ref.to_dicts()]
            frame = frame.filter(~pl.col("prompt_id").is_in(no_ref["prompt_id"].implode()))
        policy, rev = self.backend.model_id, self.backend.revision
        for row in frame.iter_rows(named=True):
            pid = row["prompt_id"]
            self.wanted[pid] = [keys.sample_id(pid, policy=policy, revision=rev, sampling=key_params, seed=cfg.seed,
                                               index=i) for i in range(cfg.n)]
            if cfg.greedy:
                self.greedy[pid] = keys.sample_id(pid, policy=policy, revision=rev, seed=cfg.seed, index=cfg.n,
                                                  sampling=cfg.greedy_sampling().key_params())
            self.convs[pid] = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            cons = loads(row["constraints"]) if cfg.repair else []
            if cons:
                self.repairs[pid] = keys.sample_id(pid, policy=policy, revision=rev, seed=cfg.seed, index=cfg.n + 1,
                                                   sampling={**cfg.greedy_sampling().key_params(),
                                                             "repair": REPAIR_RULES})
                self.constraints[pid] = (cons, self.convs[pid][-1]["content"])
            if cfg.mode == "spin":
                self.refs.append(_reference_row(pid, row["reference"]))
        if self.skipped:
            run.quarantine(self.skipped)

    def total_units(self) -> int:
        return sum(len(k) for k in self.wanted.values()) + len(self.greedy) + len(self.refs)

    def rows_in(self) -> int:
        return len(self.wanted) + len(self.skipped)

    def target_keys(self) -> list[str]:
        return ([k for ks in self.wanted.values() for k in ks] + list(self.greedy.values())
                + list(self.repairs.values()) + [r["sample_id"] for r in self.refs])

    def todo(self, done: set[str]) -> list[Item]:
        items = [Item(r["sample_id"], ("gold", r)) for r in self.refs if r["sample_id"] not in done]
        for pid, ks in self.wanted.items():
            idx = [i for i, k in enumerate(ks) if k not in done]
            if idx:
                items.append(Item(ks[idx[0]], ("sample", pid, tuple(idx)), units=len(idx)))
        items += [Item(k, ("greedy", pid)) for pid, k in self.greedy.items() if k not in done]
        items += [Item(k, ("repair", pid), units=0) for pid, k in self.repairs.items()
                  if k not in done and self.greedy[pid] in done]
        return items

    def _repair_row(self, pid: str, text: str, finish_reason: str | None) -> dict | None:
        """The greedy answer repaired to meet the prompt's constraints; None where it meets them
        already or no edit can."""
        if pid not in self.repairs:
            return None
        cons, request = self.constraints[pid]
        if check_strict(cons, text, prompt="", finish_reason=finish_reason).passed:
            return None
        count = getattr(self.backend, "count_tokens", None)
        budget = self.cfg.max_tokens
        fits = (lambda t: count(t) < budget) if callable(count) else None
        fixed = repair(cons, text, prompt=task_text(request, cons), finish_reason=finish_reason, fits=fits)
        if fixed is None or fixed == text:
            return None
        return {"sample_id": self.repairs[pid], "prompt_id": pid, "policy": self.backend.model_id,
                "policy_revision": self.backend.revision, "sample_index": self.cfg.n + 1, "seed": self.cfg.seed,
                "sampling": json.dumps({"repair": REPAIR_RULES, "of": self.greedy[pid]}, sort_keys=True),
                "completion": fixed, "finish_reason": "stop", "prompt_tokens": None,
                "completion_tokens": count(fixed) if callable(count) else None,
                "is_reference": False}

    def _stored_repairs(self, items: list[Item]) -> list[dict]:
        """Repairs of greedy answers committed earlier (a rerun that turned repair on)."""
        want = {self.greedy[it.payload[1]]: it.payload[1] for it in items}
        stored = self.store.read(self.identity.output, columns=["sample_id", "completion", "finish_reason"]).filter(
            pl.col("sample_id").is_in(list(want)))
        rows = (self._repair_row(want[r["sample_id"]], r["completion"], r["finish_reason"])
                for r in stored.iter_rows(named=True))
        return [r for r in rows if r is not None]

    def _rows(self, pid: str, idx: tuple[int, ...], comps: list[Completion], *, greedy: bool = False) -> list[dict]:
        sampling = self.cfg.greedy_sampling() if greedy else self.sampling
        sjson = json.dumps(sampling.key_params(), sort_keys=True)
        return [{"sample_id": self.greedy[pid] if greedy else self.wanted[pid][i], "prompt_id": pid,
                 "policy": self.backend.model_id,
                 "policy_revision": self.backend.revision, "sample_index": i, "seed": self.cfg.seed,
                 "sampling": sjson, "completion": c.text, "finish_reason": c.finish_reason,
                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "is_reference": False}
                for i, c in zip(idx, comps)]

    def process(self, items: list[Item]) -> Batch:
        rows = [it.payload[1] for it in items if it.payload[0] == "gold"]
        usage = Usage()
        groups: dict[int, list[Item]] = {}
        for it in items:
            if it.payload[0] == "sample":
                groups.setdefault(len(it.payload[2]), []).append(it)
        for m, group in sorted(groups.items(), reverse=True):
            call = replace(self.sampling, n=m, seed=_batch_seed(self.cfg.seed, group[0].key))
            outs = self.backend.generate([self.convs[it.payload[1]] for it in group], call)
            for it, comps in zip(group, outs):
                rows.extend(self._rows(it.payload[1], it.payload[2], comps))
                usage.add(completion_usage(comps))
        greedy = [it for it in items if it.payload[0] == "greedy"]
        if greedy:
            call = replace(self.cfg.greedy_sampling(), seed=_batch_seed(self.cfg.seed, greedy[0].key))
            outs = self.backend.generate([self.convs[it.payload[1]] for it in greedy], call)
            for it, comps in zip(greedy, outs):
                rows.extend(self._rows(it.payload[1], (self.cfg.n,), comps[:1], greedy=True))
                usage.add(completion_usage(comps[:1]))
                fixed = self._repair_row(it.payload[1], comps[0].text, comps[0].finish_reason)
                if fixed is not None:
                    rows.append(fixed)
        repairs = [it for it in items if it.payload[0] == "repair"]
        if repairs:
            rows.extend(self._stored_repairs(repairs))
        return Batch(rows=pl.DataFrame(rows, schema=get_schema("samples").schema) if rows else None, usage=usage)

    def stream(self, items: Iterator[Item]) -> Iterator[Batch]:
        """Items needing all n samples stream through `backend.stream` (the engine stays full);
        gold rows, greedy answers and partly sampled prompts go through `process`, batch_size
        items per call and commit."""
        full, rest = [], []
        for it in items:
            (full if it.payload[0] == "sample" and len(it.payload[2]) == self.cfg.n else rest).append(it)
        for i in range(0, len(rest), self.cfg.batch_size):     # one commit per batch_size items
            yield self.process(rest[i:i + self.cfg.batch_size])
        requests = ((it, self.convs[it.payload[1]]) for it in full)
        schema = get_schema("samples").schema
        for it, comps in self.backend.stream(requests, self.sampling, seed_key=lambda it: it.key):
            yield Batch(records=self._rows(it.payload[1], it.payload[2], comps), schema=schema,
                        usage=completion_usage(comps), units=len(comps))


def completion_usage(comps: list[Completion]) -> Usage:
    """One model call's usage: the prompt counted once, every completion's tokens."""
    prompt, completion = tokens_spent(comps)
    return Usage(calls=1, prompt_tokens=prompt, completion_tokens=completion)


def sample_stage(store: Store, backend: Backend, cfg: SamplingStageConfig, *, prompts: str | TableRef = "prompts",
                 output: str = "samples", progress: Progress | None = None, stream: bool | None = None,
                 commit_every_s: float = 10.0) -> TableRef:
    """Sample every selected prompt (see module docstring); returns the completed output version.
    The backend must be loaded (its revision enters the keys). `stream` (default: when the
    backend can) keeps the engine full and commits every cfg.batch_size prompts' samples or
    `commit_every_s` seconds."""
    work = SampleWork(store, backend, cfg, prompts=store.ref(prompts), output=output)
    if stream is None:
        stream = callable(getattr(backend, "stream", None))
    return drive(store, work, batch_size=cfg.batch_size, progress=progress, stream=stream,
                 commit_every_s=commit_every_s)
