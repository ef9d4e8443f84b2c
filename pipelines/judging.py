"""Pairwise judging stage: every pair of samples of a prompt judged in both orders by a pair
scorer (generators/scorers/judge_pairwise.py) -> a `judgments` table keyed
`keys.judgment_id(sample_a, sample_b, judge_id)`.

    ref = judge_pairs(store, samples=s_ref, prompts=p_ref, judge_cfg=PairwiseJudgeConfig(...),
                      output="r1.judgments.pj", max_pairs_per_prompt=6)

Runs on the stage driver: a pair whose reply in either order cannot be read is quarantined with
both raw texts; resume is per pair.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from generators.backends.base import Backend
from pipelines import keys
from pipelines.driver import Batch, Identity, Item, WorkBase, drive
from pipelines.scoring import read_inputs, results_usage
from pipelines.store import Store, TableRef

Progress = Callable[[int, int], None]


def candidate_pairs(frame: pl.DataFrame, *, judge_id: str, max_pairs_per_prompt: int | None) -> pl.DataFrame:
    """Every unordered pair of distinct samples of one prompt, a < b by sample_id, keyed by
    judgment_id; with a cap, the pairs with the smallest keys (a deterministic sample)."""
    left = frame.select("prompt_id", "messages", pl.col("sample_id").alias("sample_a"),
                        pl.col("completion").alias("text_a"))
    right = frame.select("prompt_id", pl.col("sample_id").alias("sample_b"), pl.col("completion").alias("text_b"))
    pairs = left.join(right, on="prompt_id").filter(pl.col("sample_a") < pl.col("sample_b"))
    pairs = pairs.with_columns(pl.struct("sample_a", "sample_b").map_elements(
        lambda r: keys.judgment_id(r["sample_a"], r["sample_b"], judge_id), return_dtype=pl.String)
        .alias("judgment_id")).sort("judgment_id")
    if max_pairs_per_prompt is not None:
        if max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt={max_pairs_per_prompt}; use a value >= 1 or None (all pairs)")
        pairs = pairs.filter(pl.int_range(pl.len()).over("prompt_id") < max_pairs_per_prompt)
    return pairs


class JudgeWork(WorkBase):
    def __init__(self, store: Store, cfg: Any, *, samples: TableRef, prompts: TableRef, output: str,
                 backend: Backend | None, max_pairs_per_prompt: int | None):
        self.store, self.samples, self.prompts = store, samples, prompts
        self.cap = max_pairs_per_prompt if max_pairs_per_prompt is not None else cfg.max_pairs_per_prompt
        self.judge = cfg.build(backend=backend)
        self.identity = Identity(stage="judge_pairs", output=output, kind="judgments", parents=(samples, prompts),
                                 config={"scorer": cfg.model_dump(mode="json"), "scorer_id": self.judge.id,
                                         "max_pairs_per_prompt": self.cap},
                                 models=self.judge.models, templates=self.judge.templates)
        self.pairs = pl.DataFrame()
        self._loaded = False

    def prepare(self, run) -> None:
        rows = read_inputs(self.store, self.samples, self.prompts).filter(pl.col("messages").is_not_null())
        self.pairs = candidate_pairs(rows, judge_id=self.judge.id, max_pairs_per_prompt=self.cap)

    def total_units(self) -> int:
        return self.pairs.height

    def target_keys(self) -> list[str]:
        return self.pairs["judgment_id"].to_list()

    def todo(self, done: set[str]) -> list[Item]:
        todo = self.pairs.filter(~pl.col("judgment_id").is_in(pl.Series(list(done), dtype=pl.String).implode()))
        return [Item(r["judgment_id"], r) for r in todo.iter_rows(named=True)]

    def process(self, items: list[Item]) -> Batch:
        if not self._loaded:
            self.judge.load()
            self._loaded = True
        batch = pl.DataFrame([it.payload for it in items], schema=self.pairs.schema)
        out = self.judge.compare(batch["messages"].to_list(), batch["text_a"].to_list(), batch["text_b"].to_list())
        bad = [(batch["judgment_id"][i], j.failure.reason, j.failure.raw) for i, j in enumerate(out)
               if j.failure is not None]
        ok = [i for i, j in enumerate(out) if j.failure is None]
        rows = None
        if ok:
            sub = batch[ok]
            rows = pl.DataFrame({
                "judgment_id": sub["judgment_id"], "prompt_id": sub["prompt_id"], "sample_a": sub["sample_a"],
                "sample_b": sub["sample_b"], "judge": [self.judge.id] * sub.height,
                "verdict_ab": [out[i].verdict_ab for i in ok], "verdict_ba": [out[i].verdict_ba for i in ok],
                "text_ab": [out[i].text_ab for i in ok], "text_ba": [out[i].text_ba for i in ok]})
        return Batch(rows=rows, bad=bad, usage=results_usage(out))

    def close(self) -> None:
        if self._loaded:
            self.judge.close()
            self._loaded = False


def judge_pairs(store: Store, *, samples: TableRef, prompts: TableRef, judge_cfg: Any, output: str,
                batch_size: int = 32, progress: Progress | None = None, backend: Backend | None = None,
                max_pairs_per_prompt: int | None = None) -> TableRef:
    """Judge sample pairs of each prompt in both orders; write `judgments` rows (see the module docstring)."""
    work = JudgeWork(store, judge_cfg, samples=store.ref(samples), prompts=store.ref(prompts), output=output,
                     backend=backend, max_pairs_per_prompt=max_pairs_per_prompt)
    return drive(store, work, batch_size=batch_size, progress=progress)
