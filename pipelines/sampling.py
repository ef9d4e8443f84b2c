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
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from generators.backends.base import Backend, Sampling
from pipelines import keys
from pipelines.schemas import get_schema
from pipelines.stage import StageRun
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
    split: Literal["train", "heldout", "all"] = Field("train", description="which prompts to sample")
    batch_size: int = Field(64, ge=1, description="prompts per backend call and per commit (not in keys)")

    def sampling(self) -> Sampling:
        return Sampling(n=self.n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        stop=tuple(self.stop), seed=self.seed)


def _batch_seed(seed: int, first_key: str) -> int:
    return int(keys.content_hash("batch-seed", seed, first_key)[:8], 16)


def _reference_row(pid: str, reference: str) -> dict:
    rev = keys.content_hash("reference", reference)[:12]
    sid = keys.sample_id(pid, policy=GOLD_POLICY, revision=rev, sampling={"reference": True}, seed=0, index=0)
    return {"sample_id": sid, "prompt_id": pid, "policy": GOLD_POLICY, "policy_revision": rev, "sample_index": 0,
            "seed": 0, "sampling": json.dumps({"reference": True}), "completion": reference, "finish_reason": "stop",
            "prompt_tokens": None, "completion_tokens": None, "is_reference": True}


def sample_stage(store: Store, backend: Backend, cfg: SamplingStageConfig, *, prompts: str | TableRef = "prompts",
                 output: str = "samples", progress: Progress | None = None) -> TableRef:
    """Sample every selected prompt (see module docstring); returns the completed output version.
    The backend must be loaded (its revision enters the keys)."""
    pref = store.ref(prompts)
    if not backend.revision:
        raise ValueError(f"backend {backend.model_id!r} has no revision; call backend.load() before sampling")
    sampling = cfg.sampling()
    key_params = sampling.key_params()
    run = StageRun(store, stage="sample", output=output, kind="samples", parents=[pref],
                   config=cfg.model_dump(mode="json", exclude={"batch_size"}),
                   models={"policy": {"id": backend.model_id, "revision": backend.revision}})
    if run.reused:
        log.info("sample: %s already complete for this config", run.reused)
        return run.reused
    frame = store.read(pref, columns=["prompt_id", "messages", "reference", "split"])
    if cfg.split != "all":
        frame = frame.filter(pl.col("split") == cfg.split)
    skipped: list[tuple[str, str, object]] = []
    if cfg.mode == "spin":
        no_ref = frame.filter(pl.col("reference").is_null() | (pl.col("reference").str.strip_chars() == ""))
        skipped = [(r["prompt_id"], "spin_needs_reference", {"prompt_id": r["prompt_id"]}) for r in no_ref.to_dicts()]
        frame = frame.filter(~pl.col("prompt_id").is_in(no_ref["prompt_id"].implode()))

    policy, rev = backend.model_id, backend.revision
    wanted: dict[str, list[str]] = {}
    refs: list[dict] = []
    convs: dict[str, list[dict]] = {}
    for row in frame.iter_rows(named=True):
        pid = row["prompt_id"]
        wanted[pid] = [keys.sample_id(pid, policy=policy, revision=rev, sampling=key_params, seed=cfg.seed, index=i)
                       for i in range(cfg.n)]
        convs[pid] = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if cfg.mode == "spin":
            refs.append(_reference_row(pid, row["reference"]))
    target = [k for ks in wanted.values() for k in ks] + [r["sample_id"] for r in refs]
    done = run.done_keys()
    if skipped:
        run.quarantine(skipped)
    todo_refs = [r for r in refs if r["sample_id"] not in done]
    if todo_refs:
        run.write(pl.DataFrame(todo_refs, schema=get_schema("samples").schema))
    # Prompts grouped by how many samples they miss (one Sampling(n=m) per group).
    missing: dict[int, list[tuple[str, list[int]]]] = {}
    for pid, ks in wanted.items():
        idx = [i for i, k in enumerate(ks) if k not in done]
        if idx:
            missing.setdefault(len(idx), []).append((pid, idx))
    total = len(target)
    finished = total - sum(len(idx) for group in missing.values() for _, idx in group)
    if progress:
        progress(finished, total)
    sjson = json.dumps(key_params, sort_keys=True)
    for m, group in sorted(missing.items(), reverse=True):
        for start in range(0, len(group), cfg.batch_size):
            batch = group[start:start + cfg.batch_size]
            first_key = wanted[batch[0][0]][batch[0][1][0]]
            call = replace(sampling, n=m, seed=_batch_seed(cfg.seed, first_key))
            outs = backend.generate([convs[pid] for pid, _ in batch], call)
            rows = []
            for (pid, idx), comps in zip(batch, outs):
                for i, c in zip(idx, comps):
                    rows.append({"sample_id": wanted[pid][i], "prompt_id": pid, "policy": policy,
                                 "policy_revision": rev, "sample_index": i, "seed": cfg.seed, "sampling": sjson,
                                 "completion": c.text, "finish_reason": c.finish_reason,
                                 "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                 "is_reference": False})
            run.write(pl.DataFrame(rows, schema=get_schema("samples").schema))
            finished += len(rows)
            if progress:
                progress(finished, total)
    return run.finish(rows_in=len(wanted) + len(skipped), target_keys=target)
